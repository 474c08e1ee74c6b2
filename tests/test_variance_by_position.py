"""scripts/variance_by_position.py: its by-position formula on a synthetic game with known answers, and the
script end to end on a tiny round (offline dataset)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
FASHION = Path("/usr/share/datasets/fashion-mnist")
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

vbp = importlib.import_module("variance_by_position")


def test_the_design_formulas_recover_known_position_effects():
    """Marginal of whoever sits at position k: a_k plus noise of variance s_k² (coalition-independent)."""
    n, P = 6, 60_000
    rng = np.random.default_rng(0)
    a = np.array([0.5, 0.2, 0.1, 0.05, 0.0, -0.1])
    s = np.array([0.0, 0.3, 0.2, 0.1, 0.05, 0.0])
    perms = np.stack([rng.permutation(n) for _ in range(P)])
    marg = np.empty((P, n))
    marg[np.arange(P)[:, None], perms] = a + s * rng.standard_normal((P, n))
    var, mean = vbp.cells(marg, perms)
    assert np.allclose(mean, np.tile(a, (n, 1)), atol=0.01) and np.allclose(var, np.tile(s**2, (n, 1)), atol=0.01)
    latin = vbp.design_variance(var, mean, (), True)
    uniform = vbp.design_variance(var, mean, (), False)
    assert latin == pytest.approx(n * np.mean(s**2), rel=0.03)
    assert uniform == pytest.approx(n * (np.mean(s**2 + a**2) - np.mean(a) ** 2), rel=0.03)
    exact_12 = vbp.design_variance(var, mean, (0, 1), True)  # positions 1-2 exact: their σ² drop out
    assert exact_12 == pytest.approx(n * np.sum(s[2:] ** 2) / n, rel=0.03)


def test_a_latin_block_puts_every_client_at_every_position_once():
    block = np.array(vbp.latin_block(np.random.default_rng(5), 7))
    assert all(sorted(row) == list(range(7)) for row in block)  # each row a permutation
    assert all(sorted(col) == list(range(7)) for col in block.T)  # each position every client once


@pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist missing")
def test_the_script_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "v.json"
    argv = ["--data-dir", str(FASHION), "--clients", "10", "--samples-per-client", "40", "--iterations", "2"]
    argv += ["--val", "100", "--perms", "120", "--blocks", "3", "--threads", "1", "--json", str(out)]
    assert vbp.main(argv) == 0
    doc = json.loads(out.read_text())
    assert sum(doc["within_share_groups"].values()) == pytest.approx(1.0)
    assert doc["formula_c2"]["uniform"] >= doc["formula_c2"]["latin"] >= doc["formula_c2"]["exact 1-3, latin"]
    assert set(doc["measured_c2_one_block"]) == {"uniform", "paired", "latin"}
    assert all(v >= 0 for v in doc["measured_c2_one_block"].values())
    assert "latin / paired" in capsys.readouterr().out
