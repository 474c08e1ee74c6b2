"""The explorer's pages in-process (no browser; tests/test_explorer.py drives chromium): an empty chain,
unknown blocks and bad input get clear HTML pages with the right status, the assets are the node's own,
and every value is escaped."""

from __future__ import annotations

from fedcoin.node import explorer


def test_an_empty_chain_and_bad_input_get_clear_pages(miner):
    r = miner.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Only the genesis block so far" in r.text and "Not mining" in r.text
    head = r.text.split("<body")[0]
    assert '<script src="/static/explorer.js"' in head and "//" not in head  # every asset is the node's own
    for path, status in [
        ("/explorer/blocks/5", 404),
        ("/explorer/blocks/-1", 400),
        ("/explorer/blocks/x", 400),
        ("/explorer/accounts/zz", 400),
    ]:
        r = miner.get(path)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html"), path
        assert f"<title>{status}" in r.text and 'class="error"' in r.text and "Traceback" not in r.text
    assert miner.get("/explorer/blocks/0").status_code == 200


def test_assets_are_served_by_the_node(miner):
    css, js = miner.get("/static/explorer.css"), miner.get("/static/explorer.js")
    assert css.status_code == js.status_code == 200
    assert css.headers["content-type"].startswith("text/css") and "svg.bars" in css.text
    assert js.headers["content-type"].startswith("text/javascript") and "/race" in js.text
    assert miner.get("/static/../app.py").status_code == 404
    assert miner.get("/static/other.js").status_code == 404
    race = miner.get("/race").json()
    assert race["task_id"] is None and race["miners"] == []


def test_values_are_escaped():
    html = explorer.account_page({"account": "<script>x</script>", "balance": 1, "height": 0, "nonce": 0}, [])
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "&lt;b&gt;" in explorer.bars(["<b>"], [1.0])
