"""Prometheus metrics at /metrics and JSON log lines: blocks counted by outcome and reject reason, reorgs
and their depth, levels read at scrape time, HTTP requests by route template; FEDCOIN_LOG_FORMAT=json gives
one parseable event per line. (A running network's counters moving as blocks are mined: test_network.py.)"""

from __future__ import annotations

import json
import logging

import pytest
from conftest import give_task
from prometheus_client.parser import text_string_to_metric_families

from fedcoin.chain.reports import make_report
from fedcoin.errors import SettingsError
from fedcoin.ledger.chain import Chain, tie_key
from fedcoin.node.logs import configure_logging, event
from fedcoin.node.settings import MinerSettings, load


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def test_blocks_are_counted_by_outcome_and_reason(miner, net, node_env):
    before = scrape(miner)
    assert before[("fedcoin_chain_height", ())] == 0
    assert before[("fedcoin_posap_iterations_total", ())] == 0
    t1 = give_task(miner, net, "t1", net.T0 + 1_000)
    fresh = Chain(node_env)
    blocks = sorted((net.block(fresh, t1, winner=w) for w in (1, 2, 3)), key=lambda b: tie_key(b.header))
    first, best = blocks[-1], blocks[0]  # the larger tie key first, then the smaller one takes over: a reorg
    tampered = net.reheader(first, None, s_avg=[0.9, 0.05, 0.05])
    assert miner.post("/blocks", json=tampered.to_dict()).status_code == 422
    assert miner.post("/blocks", json=first.to_dict()).json()["status"] == "extended"
    assert miner.post("/blocks", json=best.to_dict()).json()["status"] == "reorg"
    after = scrape(miner)
    assert after[("fedcoin_blocks_total", (("outcome", "rejected"), ("reason", "bad-signature")))] == 1
    assert after[("fedcoin_blocks_total", (("outcome", "extended"), ("reason", "")))] == 1
    assert after[("fedcoin_blocks_total", (("outcome", "reorg"), ("reason", "")))] == 1
    assert after[("fedcoin_reorgs_total", ())] == 1 and after[("fedcoin_reorg_depth_sum", ())] == 1
    assert after[("fedcoin_block_verify_seconds_count", ())] == 3
    assert after[("fedcoin_chain_height", ())] == 1
    key = ("fedcoin_http_requests_total", (("method", "POST"), ("route", "/blocks"), ("status", "422")))
    assert after[key] == 1
    miner.get("/blocks/0")
    miner.get("/blocks/1")
    miner.get("/no/such/route")
    final = scrape(miner)
    key = ("fedcoin_http_requests_total", (("method", "GET"), ("route", "/blocks/{height}"), ("status", "200")))
    assert final[key] == 2  # by route template: the label set stays bounded
    assert final[("fedcoin_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1


def test_reports_are_counted_accepted_or_rejected(miner, net):
    task = give_task(miner, net, "t2", net.T0 + 1_000)
    head = miner.get("/chain/head").json()["hash"]
    own = make_report(net.miners[1], task_id=task.task_id, prev_hash=head, shapley=[0.5, 0.3, 0.2], iterations=1)
    bad = own.model_copy(update={"iterations": 2})  # the signature no longer covers it
    assert miner.post("/reports", json=bad.to_dict()).status_code >= 400
    assert miner.post("/reports", json=own.to_dict()).status_code == 202
    m = scrape(miner)
    assert m[("fedcoin_reports_total", (("outcome", "accepted"),))] == 1
    assert m[("fedcoin_reports_total", (("outcome", "rejected"),))] == 1


def test_json_logs_are_one_event_per_line(capsys):
    configure_logging("INFO", "json")
    try:
        logging.getLogger("fedcoin.test").info(
            "block %d rejected", 7, extra=event("block-rejected", reason="bad-leaf", height=7)
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("fedcoin.test").exception("failed")
        lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    finally:
        configure_logging("WARNING", "text")
    first, second = lines[-2], lines[-1]
    assert first["event"] == "block-rejected" and first["reason"] == "bad-leaf" and first["height"] == 7
    assert first["message"] == "block 7 rejected" and first["level"] == "INFO" and first["logger"] == "fedcoin.test"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
    with pytest.raises(ValueError):
        configure_logging("INFO", "xml")


def test_the_log_format_is_a_checked_setting(node_env, monkeypatch):
    monkeypatch.setenv("FEDCOIN_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError):
        load(MinerSettings)
    monkeypatch.setenv("FEDCOIN_LOG_FORMAT", "json")
    assert load(MinerSettings).log_format == "json"
