"""The block explorer in a real browser: headless Debian chromium, driven by Selenium, against a
local-process network with a settled task. Pages load, links go from the chain to a block to a client's
account and from the FL server's task page to the miner's block, the values shown are the APIs', the chain
page follows a new block live (no reload), and unknown blocks and bad input get a clear page. Screenshots
of every page go to build/; load times (p50 of 20 loads per page) to build/explorer-timings.json."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import pytest

from fedcoin.client import MinerClient, RequesterClient, ServerClient
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.devnet.watch import wait_for_task

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")
BASE_PORT = 19000
BUILD = Path(__file__).resolve().parents[1] / "build"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    d = tmp_path_factory.mktemp("explorer-net")
    specs = plan_network(
        d, miners=4, client_types="0-9", base_port=BASE_PORT, budget=1_000_000, rounds=1, initial_difficulty=0.03
    )  # a D at which a race lasts several of the page's 1 s refreshes, so the test can watch one
    net = LocalNetwork(d, specs)
    try:
        net.start_all()
        net.wait_healthy(timeout=180)
        wait_for_task(net.url("server"), "default", timeout=600)
        yield net
    finally:
        net.stop_all()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (make setup installs them where apt is available)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def text(driver, css: str) -> str:
    """An element's text, read in one script call (the page's own script rewrites parts of it every second)."""
    return driver.execute_script("return document.querySelector(arguments[0]).innerText.trim()", css)


def rows(driver, css: str) -> list[list[str]]:
    """A table's body as text, read atomically in one script call: no stale element between two reads."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.innerText.trim()))",
        css,
    )


def shot(driver, name: str) -> None:
    BUILD.mkdir(exist_ok=True)
    driver.save_screenshot(str(BUILD / f"explorer-{name}.png"))


def test_chain_block_account_pages_show_what_the_apis_say(network, browser):
    from selenium.webdriver.common.by import By

    m1 = network.url("miner1")
    with MinerClient(m1) as api:
        head, chain = api.head(), api.chain()
        block = api.block(1)
    browser.get(f"{m1}/")
    assert browser.title.startswith("Chain")
    assert text(browser, "#head-height") == str(head.height)
    table = rows(browser, "#chain-table")
    assert [r[0] for r in table] == [str(b.height) for b in reversed(chain)]
    assert table[0][3] == block.header.task_id and table[0][5] == str(block.header.iterations)
    network_rows = rows(browser, "#network-table")
    assert len(network_rows) == 3 and all(r[3] == "same head" for r in network_rows)
    shot(browser, "chain")
    # chain -> block
    browser.find_element(By.LINK_TEXT, "1").click()
    assert browser.title.startswith("Block 1")
    fields = dict(rows(browser, "#header-table"))
    assert fields["hash"] == block.hash and fields["iterations"] == str(block.header.iterations)
    rewards = {t.recipient: t.amount for t in block.body.transactions if t.kind == "reward"}
    paid = rows(browser, "#payments-table")
    assert len(paid) == len(block.body.task.clients)
    for (client_short, s_avg, _s_winner, amount), client, s in zip(
        paid, block.body.task.clients, block.header.s_avg, strict=True
    ):
        assert client.startswith(client_short) and float(s_avg) == pytest.approx(s, abs=1e-6)
        assert int(amount) == rewards.get(client, 0)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.bars rect")  # the bar chart is drawn
    shot(browser, "block")
    # block -> a paid client's account
    best = max(rewards, key=rewards.get)
    browser.find_element(By.CSS_SELECTOR, f'#payments-table a[href$="{best}"]').click()
    assert text(browser, "#account") == best
    with MinerClient(m1) as api:
        assert text(browser, "#balance") == str(api.balance(best).balance)
    history = rows(browser, "#history-table")
    assert any(r[1] == "reward" and r[4] == str(rewards[best]) for r in history)
    shot(browser, "account")


def test_the_task_page_links_to_the_miners_block(network, browser):
    from selenium.webdriver.common.by import By

    with ServerClient(network.url("server")) as api:
        task = api.task("default")
    browser.get(f"{network.url('server')}/explorer/tasks/default")
    assert text(browser, "#status") == task.status == "done"
    (round0,) = rows(browser, "#rounds-table")
    res = task.round_results[0]
    assert round0[1] == str(res.block_height)
    assert float(round0[2]) == pytest.approx(res.metrics["accuracy"], abs=1e-3)
    assert len(rows(browser, "#round-0-table")) == len(res.clients)
    shot(browser, "task")
    browser.find_element(By.CSS_SELECTOR, "#rounds-table a").click()
    assert browser.title.startswith(f"Block {res.block_height}")
    assert dict(rows(browser, "#header-table"))["hash"] == res.block_hash


def test_the_chain_page_follows_a_new_block_live(network, browser):
    m1 = network.url("miner1")
    browser.get(f"{m1}/")
    before = int(text(browser, "#head-height"))
    stamp = text(browser, "#updated")
    seen: list[tuple[str, list[list[str]]]] = []  # what the race panel showed while the miners raced
    with RequesterClient(network.url("requester")) as req:
        req.submit(budget=100_000, rounds=1, task_id="live")
        deadline = time.monotonic() + 300
        while not req.task("live").server.final:
            assert time.monotonic() < deadline
            seen.append((text(browser, "#race-status"), rows(browser, "#race-table")))
            if seen[-1][0].startswith("Task live") and any(r[1] not in ("", "0") for r in seen[-1][1]):
                shot(browser, "race")
            time.sleep(0.2)
    racing = [table for status, table in seen if status.startswith("Task live:r0")]
    assert racing, "the race panel never showed the race"
    assert any(int(r[1]) > 0 and r[2] for table in racing for r in table)  # (S, iterations), refreshed from /race
    deadline = time.monotonic() + 30
    while int(text(browser, "#head-height")) <= before:  # no reload: the page's script fetched it
        assert time.monotonic() < deadline, "the chain page did not follow the new block"
        time.sleep(0.5)
    table = rows(browser, "#chain-table")
    assert table[0][0] == text(browser, "#head-height") and table[0][3] == "live:r0"
    assert text(browser, "#updated") != stamp
    assert text(browser, "#race-status")  # the race panel is rendered and refreshed with the rest


def test_unknown_blocks_and_bad_input_get_a_clear_page(network, browser):
    m1 = network.url("miner1")
    for path, code in [
        ("/explorer/blocks/99999", "404"),
        ("/explorer/blocks/abc", "400"),
        ("/explorer/accounts/not-an-account", "400"),
    ]:
        browser.get(f"{m1}{path}")
        assert browser.title.startswith(code), (path, browser.title)
        assert "Traceback" not in browser.page_source
        assert text(browser, ".error")
    shot(browser, "not-found")
    browser.get(f"{network.url('server')}/explorer/tasks/nope")
    assert browser.title.startswith("404") and "nope" in text(browser, ".error")


def test_page_load_times(network, browser):
    """p50 over 20 loads per page (navigation start to the load event), written to build/."""
    pages = {
        "chain": f"{network.url('miner1')}/",
        "block": f"{network.url('miner1')}/explorer/blocks/1",
        "task": f"{network.url('server')}/explorer/tasks/default",
    }
    with RequesterClient(network.url("requester")) as req:
        doc = req.task("default")
    pages["account"] = f"{network.url('miner1')}/explorer/accounts/{doc.server.round_results[0].clients[0]}"
    timings = {}
    for name, url in pages.items():
        ms = []
        for _ in range(20):
            browser.get(url)
            nav = browser.execute_script("return performance.getEntriesByType('navigation')[0].toJSON()")
            ms.append(nav["loadEventEnd"] - nav["startTime"])
        timings[name] = {"p50_ms": statistics.median(ms), "max_ms": max(ms), "loads": len(ms)}
    BUILD.mkdir(exist_ok=True)
    (BUILD / "explorer-timings.json").write_text(json.dumps(timings, indent=2))
    print(json.dumps(timings))
    assert all(t["p50_ms"] > 0 for t in timings.values())
