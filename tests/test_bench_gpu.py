"""scripts/bench_gpu.py end to end on the CPU (its every phase, tiny counts), and its refusal without CUDA:
the GPU run itself happens only where a GPU is (``make bench-gpu``), so this keeps the script working."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
FASHION = Path("/usr/share/datasets/fashion-mnist")
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))  # as when the script runs: its sibling scripts are importable

bench_gpu = importlib.import_module("bench_gpu")

pytestmark = pytest.mark.skipif(
    not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason="Debian dataset-fashion-mnist not installed"
)


def test_every_phase_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--chunks", "4", "--batches", "3", "--perms", "6", "--cpu-perms", "2"]
    argv += ["--mine-s", "0.2", "--gossip-every", "4", "--agree-perms", "3", "--naive-perms", "1"]
    argv += ["--race-d", "0.1", "--json", str(out)]
    assert bench_gpu.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["bandwidth_bound_perm_per_s"] > 0 and res["workspace_bytes"] > 80e6
    assert set(res["gpu"]) == {"chunk4-loop", "chunk4-scan", "batch3"}
    assert all(row["fraction_of_bandwidth_bound"] > 0 for row in res["gpu"].values())
    assert res["miner"]["iterations"] > 0 and res["miner"]["sampler"] == "paired"
    for metric in ("accuracy", "neg_loss"):  # the same CPU engine twice: identical
        a = res["agreement"][metric]
        assert a["max_abs_diff"] == 0.0 and a["values_over_work_tolerance"] == 0 and a["leaf_values"] == 300
        assert a["max_abs_diff_batched"] <= 1e-6
    assert res["max_abs_marginal_diff_naive_cpu_vs_gpu"] <= 1e-5
    (race,) = res["races"]
    assert race["accepted_by_all"] and race["winner_iterations"] > 0
    assert race["block_json_bytes"] > 0 and race["work_log_decoded_bytes"] == race["winner_iterations"] * 100 * 8
    assert res["work_log_cap_iterations"] == 167_772  # decoded; the deflated size may bind first
    assert "race at D=0.1" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_without_cuda_it_says_so_and_measures_nothing(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--json", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().out and not out.exists()
