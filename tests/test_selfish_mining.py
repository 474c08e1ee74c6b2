"""Selfish mining against PoSap (`scripts/selfish_mining.py`, the paper's Section 5).

The analytic Eyal & Sirer revenue and its thresholds, the Monte Carlo against it, and the
property of sequential task processing the paper's Observation 1 rests on: a pool that
withholds has no task to mine on, so its lead never exceeds 1 and it never earns more than
its share.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(60)

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "selfish_mining.py"
_spec = importlib.util.spec_from_file_location("selfish_mining", _PATH)
assert _spec is not None and _spec.loader is not None
sm = importlib.util.module_from_spec(_spec)
sys.modules["selfish_mining"] = sm  # dataclasses resolve their module by name
_spec.loader.exec_module(sm)


def test_analytic_thresholds_are_the_classic_ones():
    assert sm.es_threshold(0.0) == pytest.approx(1 / 3)
    assert sm.es_threshold(0.5) == pytest.approx(1 / 4)
    assert sm.es_threshold(1.0) == 0.0
    # at the threshold the selfish pool earns exactly its share; just above it, more; just below, less
    for gamma, th in ((0.0, 1 / 3), (0.5, 1 / 4)):
        assert sm.es_revenue(th, gamma) == pytest.approx(th, abs=1e-12)
        assert sm.es_revenue(th + 0.01, gamma) > th + 0.01
        assert sm.es_revenue(th - 0.01, gamma) < th - 0.01
        assert sm.bisect_threshold(lambda a, g=gamma: sm.es_revenue(a, g)) == pytest.approx(th, abs=1e-6)
    assert sm.bisect_threshold(lambda a: sm.es_revenue(a, 1.0)) == 0.0


def test_closed_form_matches_the_markov_chain():
    for alpha in (0.1, 0.25, 0.4, 0.45):
        for gamma in (0.0, 0.5, 1.0):
            assert sm.es_markov(alpha, gamma)["revenue"] == pytest.approx(sm.es_revenue(alpha, gamma), abs=1e-9)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.2, 0.5), (0.4, 0.0)])
def test_monte_carlo_agrees_with_eyal_sirer_in_parallel_mode(alpha, gamma):
    p = sm.simulate_point("parallel", alpha, gamma, events=20_000, replicates=8, rng=np.random.default_rng(7))
    analytic = sm.es_revenue(alpha, gamma)
    assert p["mean"] == pytest.approx(analytic, abs=0.01)
    assert p["ci95"][0] <= analytic <= p["ci95"][1]
    assert p["ci95"][1] - p["ci95"][0] < 0.04
    assert p["max_lead"] > 1  # the pool mines ahead on its private branch


def test_honest_pool_earns_its_share():
    r = sm.simulate_run("parallel", 0.3, 0.5, 50_000, np.random.default_rng(1), selfish=False)
    assert r.revenue == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_sequential_withholding_never_pays(gamma):
    """Observation 1: with one task at a time the pool cannot mine past its withheld block,
    so its lead stays <= 1, its share is alpha * gamma <= alpha, and it is slower per unit time."""
    for alpha in (0.3, 0.45):
        p = sm.simulate_point("sequential", alpha, gamma, events=20_000, replicates=6, rng=np.random.default_rng(3))
        assert p["max_lead"] <= 1
        assert p["mean"] == pytest.approx(alpha * gamma, abs=0.01)
        assert p["mean"] <= alpha + 0.01
        # parallel mode at the same alpha pays well above alpha (0.45 > every threshold; 0.3 > 1/4 for gamma >= 0.5)
        if alpha == 0.45 or gamma >= 0.5:
            assert sm.es_revenue(alpha, gamma) > alpha + 0.02
        # even when it wins every tie, the pool's blocks per unit time fall to alpha * gamma * (1 - alpha) < alpha
        assert p["pool_blocks_per_time"] < alpha
        assert p["pool_blocks_per_time"] == pytest.approx(alpha * gamma * (1 - alpha), abs=0.01)
    assert sm.analytic_threshold("sequential", gamma) is None
    assert sm.bisect_threshold(lambda a: sm.analytic_revenue("sequential", a, gamma)) is None


def test_quick_run_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "sm.json", tmp_path / "sm.png"
    assert sm.main(["--quick", "--events", "2000", "--replicates", "3", "--json", str(out), "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert doc["thresholds"]["parallel"]["0.0"]["analytic"] == pytest.approx(1 / 3)
    assert doc["thresholds"]["sequential"]["0.5"]["analytic"] is None
    assert len(doc["results"]["parallel"]["0.5"]) == len(doc["params"]["alphas"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
