"""Typed settings: parsed once, defaults defined once, a bad value names its variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcoin.chain.genesis import GenesisConfig
from fedcoin.cli import app
from fedcoin.errors import InvalidInput, SettingsError
from fedcoin.node.settings import (
    ROLES,
    ClientSettings,
    MinerSettings,
    RequesterSettings,
    ServerSettings,
    default,
    describe,
    env_name,
    load,
    markdown_table,
    parse_types,
    service_environment,
)


@pytest.fixture
def genesis(tmp_path, monkeypatch) -> Path:
    for name in list(os.environ):
        if name.startswith("FEDCOIN_"):
            monkeypatch.delenv(name)
    path = tmp_path / "genesis.json"
    GenesisConfig().save(path)
    monkeypatch.setenv("FEDCOIN_GENESIS", str(path))
    return path


def test_each_role_parses_its_variables(genesis, monkeypatch):
    monkeypatch.setenv("FEDCOIN_PEERS", "http://m1:8101, http://m2:8102/,")
    monkeypatch.setenv("FEDCOIN_ADVERTISE_URL", "http://m1:8101")
    monkeypatch.setenv("FEDCOIN_BATCH", "8")
    m = load(MinerSettings)
    assert m.peers == ["http://m1:8101", "http://m2:8102"] and m.other_peers == ["http://m2:8102"] and m.batch == 8
    assert m.state_dir == Path(".fedcoin/miner") and m.key_path == Path(".fedcoin/miner/miner.key")
    monkeypatch.setenv("FEDCOIN_HIDDEN", "64,32")
    monkeypatch.setenv("FEDCOIN_EMPTY_VALUE", "0")
    monkeypatch.setenv("FEDCOIN_ADVERTISE_URL", "http://server:8001")
    s = load(ServerSettings)
    assert s.hidden == (64, 32) and s.empty_value == 0.0
    monkeypatch.setenv("FEDCOIN_EMPTY_VALUE", "global")
    assert load(ServerSettings).empty_value == "global"
    monkeypatch.setenv("FEDCOIN_CLIENT_TYPES", "0-2,7")
    monkeypatch.setenv("FEDCOIN_DATA_DIR", "/tmp/c")
    c = load(ClientSettings)
    assert c.client_types == [0, 1, 2, 7] and c.key_path == Path("/tmp/c/client.key")
    monkeypatch.setenv("FEDCOIN_DEFAULT_TASK", "off")
    assert load(RequesterSettings).default_task is False


def test_an_empty_variable_counts_as_unset(genesis, monkeypatch):
    monkeypatch.setenv("FEDCOIN_PEERS", "")
    monkeypatch.setenv("FEDCOIN_BATCH", "")
    m = load(MinerSettings)
    assert m.peers == [] and m.batch is None and default(MinerSettings, "batch") is None  # the device decides


@pytest.mark.parametrize(
    "role, variable, value",
    [
        (MinerSettings, "FEDCOIN_BATCH", "four"),
        (MinerSettings, "FEDCOIN_PEERS", "ftp://m1"),
        (MinerSettings, "FEDCOIN_REPORT_INTERVAL", "-1"),
        (ServerSettings, "FEDCOIN_EMPTY_VALUE", "zero"),
        (ServerSettings, "FEDCOIN_METRIC", "f1"),
        (ServerSettings, "FEDCOIN_HIDDEN", "200,0"),
        (ServerSettings, "FEDCOIN_LR", "nan"),
        (ClientSettings, "FEDCOIN_CLIENT_TYPES", "0-x"),
        (RequesterSettings, "FEDCOIN_BUDGET", "0"),
        (RequesterSettings, "FEDCOIN_DEFAULT_TASK", "maybe"),
        (RequesterSettings, "FEDCOIN_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_fails_at_start_naming_the_variable(genesis, monkeypatch, role, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load(role)
    assert variable in str(info.value) and repr(value) in str(info.value)


def test_a_missing_genesis_is_named(genesis, monkeypatch, tmp_path):
    monkeypatch.delenv("FEDCOIN_GENESIS")
    with pytest.raises(SettingsError, match="FEDCOIN_GENESIS: Field required"):
        load(MinerSettings)
    monkeypatch.setenv("FEDCOIN_GENESIS", str(tmp_path / "absent.json"))
    with pytest.raises(SettingsError, match="FEDCOIN_GENESIS"):
        load(ServerSettings)


def test_defaults_are_defined_once_and_rendered_from_the_models():
    assert default(ServerSettings, "lr") == 0.1 and default(ServerSettings, "hidden") == (200,)
    assert default(ClientSettings, "client_types") == list(range(10))
    for cls in ROLES.values():
        table, text = markdown_table(cls), describe(cls)
        for name, info in cls.model_fields.items():
            assert f"`{env_name(name)}`" in table and env_name(name) in text
            assert info.description, f"{cls.__name__}.{name} has no description"
    assert "| `FEDCOIN_CLIENT_TYPES` | `0-9` |" in markdown_table(ClientSettings)
    assert "| `FEDCOIN_GENESIS` | required |" in markdown_table(MinerSettings)


def test_services_start_with_capped_malloc_arenas_unless_the_operator_chose():
    assert service_environment({"PATH": "/bin"}) == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}
    assert service_environment({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"


def test_parse_types():
    assert parse_types("0-2, 5,0-1") == [0, 1, 2, 5, 0, 1]
    for bad in ("", "a", "-1", "3-x"):
        with pytest.raises(InvalidInput):
            parse_types(bad)


def test_serve_refuses_to_start_on_a_bad_setting(genesis, monkeypatch):
    monkeypatch.setenv("FEDCOIN_SYNC_INTERVAL", "soon")
    result = CliRunner().invoke(app, ["serve", "miner", "--port", "18999"])
    assert result.exit_code == 2
    assert "FEDCOIN_SYNC_INTERVAL" in result.output
