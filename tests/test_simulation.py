"""`fedcoin simulate`: PoSap among in-process miners, settled and paid on their chains."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedcoin.cli import app


def test_fedcoin_simulate_mines_and_pays_from_the_deposit(tmp_path):
    """`fedcoin simulate` (the README's `make simulate`): one in-process round, paid from the
    requester's escrowed deposit to the clients with positive Shapley values."""
    out = tmp_path / "sim.json"
    res = CliRunner().invoke(app, ["simulate", "--clients", "4", "--miners", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["height"] == 1
    paid = {a: v for a, v in doc["payments"].items() if v > 0}
    positive = [i for i, s in enumerate(doc["block_s_avg"]) if s > 0]
    assert len(paid) == len(positive) >= 1
    assert sum(doc["balances"].values()) == doc["supply"] == 1_000_000
