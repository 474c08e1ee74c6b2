"""``fedcoin testnet init``: the chain's sampler is chosen at genesis and checked on re-use."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedcoin.chain.genesis import GenesisConfig
from fedcoin.cli import app
from fedcoin.devnet.testnet import init_testnet
from fedcoin.errors import InvalidInput


def test_the_sampler_is_written_to_a_new_genesis_and_checked_on_reuse(tmp_path):
    out = init_testnet(tmp_path, miners=2, sampler="stratified")
    genesis = GenesisConfig.load(out["genesis"])
    assert genesis.params.sampler == "stratified"
    assert init_testnet(tmp_path, miners=2, sampler="stratified") == out  # idempotent
    assert init_testnet(tmp_path, miners=2) == out  # no sampler asked for: the genesis's stands
    with pytest.raises(InvalidInput, match="uses the stratified sampler, not paired"):
        init_testnet(tmp_path, miners=2, sampler="paired")


def test_without_a_sampler_the_genesis_has_the_default(tmp_path):
    out = init_testnet(tmp_path, miners=1)
    assert GenesisConfig.load(out["genesis"]).params.sampler == "paired"


def test_an_unknown_sampler_is_refused_and_writes_no_genesis(tmp_path):
    with pytest.raises(InvalidInput, match="bad chain parameters"):
        init_testnet(tmp_path, miners=1, sampler="sobol")
    assert not (tmp_path / "genesis.json").exists()


def test_the_command_takes_the_sampler(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["testnet", "init", str(tmp_path / "net"), "--miners", "2", "--sampler", "uniform"])
    assert res.exit_code == 0, res.output
    assert GenesisConfig.load(json.loads(res.output)["genesis"]).params.sampler == "uniform"
    bad = runner.invoke(app, ["testnet", "init", str(tmp_path / "other"), "--sampler", "sobol"])
    assert bad.exit_code == 2 and "bad chain parameters" in bad.output
