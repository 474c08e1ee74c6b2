"""The block explorer: server-rendered HTML pages over a node's own answers.

Every page is plain HTML built here from the same data the JSON API answers (every value is
escaped); the one stylesheet and the one script are served by the node itself
(``/static/explorer.css``, ``/static/explorer.js``), so the pages work offline, with no CDN and no
build step. The script only refreshes the chain's head, the chain table and the current race
(from ``/chain/head``, ``/chain`` and ``/race``) every second; everything else is in the HTML.

Pages: the chain with the race and the network (``/``), a block (``/explorer/blocks/{height}``),
an account (``/explorer/accounts/{account}``) on a miner; a training task
(``/explorer/tasks/{id}``) and the list of tasks (``/explorer/tasks``) on the FL server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from importlib import resources
from typing import Any

from fedcoin import __version__


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def short(h: str, n: int = 12) -> str:
    return _e(h[:n])


def when(ms: int | float) -> str:
    """A block timestamp (ms since the epoch) as UTC text."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def block_link(height: int) -> str:
    return f'<a href="/explorer/blocks/{int(height)}">{int(height)}</a>'


def account_link(account: str, base: str = "") -> str:
    return (
        f'<a class="hash" href="{_e(base)}/explorer/accounts/{_e(account)}" title="{_e(account)}">{short(account)}</a>'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, id: str = "", cls: str = "") -> str:
    """A table; ``rows`` are already HTML (escape their text with :func:`_e`)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    ids = f' id="{_e(id)}"' if id else ""
    return f'<table{ids} class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(title: str, body: str, *, role: str = "miner", live: bool = False) -> str:
    nav = (
        '<a href="/">chain</a> <a href="/#race">race</a> <a href="/#network">network</a>'
        if role == "miner"
        else '<a href="/explorer/tasks">tasks</a>'
    )
    script = '<script src="/static/explorer.js" defer></script>' if live else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)} · FedCoin</title>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<link rel=stylesheet href="/static/explorer.css">{script}</head>'
        f'<body data-role="{_e(role)}"><header><b>FedCoin</b> {role} explorer <nav>{nav}</nav></header>'
        f"<main><h1>{_e(title)}</h1>{body}</main>"
        f"<footer>fedcoin {_e(__version__)}</footer></body></html>"
    )


def error_page(status: int, message: str, role: str = "miner") -> str:
    return page(f"{status}: {message.split(':')[0][:80]}", f'<p class="error">{_e(message)}</p>', role=role)


def bars(labels: Sequence[str], values: Sequence[float], *, width: int = 640) -> str:
    """A horizontal bar chart (inline SVG) of ``values``; positive right of the axis, negative left."""
    n = len(values)
    if n == 0:
        return "<p>no values</p>"
    lim = max(abs(v) for v in values) or 1.0
    row, label_w = 18, 110
    half = (width - label_w - 70) / 2
    axis = label_w + half
    parts = [
        f'<svg class="bars" role="img" aria-label="Shapley values" width="{width}" height="{row * n + 4}" '
        f'viewBox="0 0 {width} {row * n + 4}">',
        f'<line x1="{axis:.1f}" x2="{axis:.1f}" y1="0" y2="{row * n}" class="axis"/>',
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        w = abs(v) / lim * half
        x = axis if v >= 0 else axis - w
        y = i * row + 2
        cls = "pos" if v > 0 else "neg"
        parts.append(f'<text x="0" y="{y + 12}" class="lbl">{_e(label)}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{row - 5}" class="{cls}"/>')
        parts.append(f'<text x="{width - 66}" y="{y + 12}" class="val">{v:+.5f}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- miner pages ---------------------------------------------------------------------------------
def chain_page(
    head: Mapping[str, Any],
    chain: Sequence[Mapping[str, Any]],
    race: Mapping[str, Any],
    network: Sequence[tuple[str, Mapping[str, Any] | None]],
) -> str:
    rows = [
        (
            block_link(b["height"]),
            f'<span class="hash">{short(b["hash"], 16)}</span>',
            account_link(b["winner"]) if b["height"] > 0 else "—",
            _e(b["task_id"]),
            f"{b['difficulty']:.3g}",
            _e(b["iterations"]),
            _e(b["transactions"]),
            _e(when(b["timestamp"])) if "timestamp" in b else "",
        )
        for b in reversed(chain)
    ]
    empty = "" if len(chain) > 1 else '<p class="note">Only the genesis block so far: no task has been settled yet.</p>'
    net_rows = [
        (
            _e(url),
            "unreachable" if h is None else block_link(h["height"]),
            "" if h is None else f'<span class="hash">{short(h["hash"], 16)}</span>',
            "" if h is None else ("same head" if h["hash"] == head["hash"] else "differs"),
        )
        for url, h in network
    ]
    body = (
        f'<section id="head"><p>Head: height <b id="head-height">{int(head["height"])}</b>, '
        f'hash <span class="hash" id="head-hash">{short(head["hash"], 16)}</span>, '
        f'next D <span id="head-d">{head["next_difficulty"]:.3g}</span> '
        f'<span class="note" id="updated"></span></p></section>'
        f'<section id="chain"><h2>Chain</h2>{empty}'
        + table(["height", "hash", "winner", "task", "D", "iterations", "txs", "time"], rows, id="chain-table")
        + "</section>"
        + f'<section id="race"><h2>Race</h2>{race_html(race)}</section>'
        + '<section id="network"><h2>Network</h2>'
        + table(["peer", "height", "head", ""], net_rows, id="network-table")
        + "</section>"
    )
    return page("Chain", body, live=True)


def race_html(race: Mapping[str, Any]) -> str:
    if not race.get("task_id"):
        return '<p id="race-status">Not mining: no unsettled task.</p>' + table(RACE_COLUMNS, [], id="race-table")
    rows = [
        (
            account_link(m["account"]) + (" (this node)" if m["self"] else ""),
            _e(m["iterations"]),
            _e(s_preview(m.get("shapley", []))),
            "—" if m["distance"] is None else f"{m['distance']:.5f}",
            "yes" if m["within"] else "no",
        )
        for m in race["miners"]
    ]
    status = f"Task {_e(race['task_id'])} on height {int(race['height'])}, D = {race['difficulty']:.3g}"
    return f'<p id="race-status">{status}</p>' + table(RACE_COLUMNS, rows, id="race-table")


RACE_COLUMNS = ["miner", "iterations", "S (first values)", "‖S − S̄‖", "within D"]


def s_preview(values: Sequence[float], n: int = 4) -> str:
    """The first ``n`` values of a Shapley vector, and how many there are."""
    head = " ".join(f"{v:+.3f}" for v in values[:n])
    return f"{head} … ({len(values)})" if len(values) > n else head


def block_page(block: Mapping[str, Any]) -> str:
    h = block["header"]
    txs = block["body"]["transactions"]
    task = block["body"].get("task") or {}
    clients = task.get("clients", [])
    rewards: dict[str, int] = {}
    for t in txs:
        if t["kind"] == "reward":
            rewards[t["recipient"]] = rewards.get(t["recipient"], 0) + int(t["amount"])
    height = int(h["height"])
    prev = f'{block_link(height - 1)} <span class="hash">{short(h["prev_hash"], 16)}</span>' if height else "—"
    fields = [  # Table 1's header items first, then the rest of the header
        ("block ID (height)", _e(height)),
        ("winner's ID", account_link(h["winner"]) if height else "—"),
        ("previous hash", prev),
        ("difficulty D", f"{h['difficulty']:.4g}"),
        ("Merkle tree root", f'<span class="hash">{_e(h["merkle_root"])}</span>'),
        ("hash", f'<span class="hash">{_e(block.get("hash", ""))}</span>'),
        ("time", _e(when(h["timestamp"]))),
        ("task", _e(h["task_id"])),
        ("task hash", f'<span class="hash">{_e(h["task_hash"])}</span>'),
        ("iterations", _e(h["iterations"])),
        ("work root", f'<span class="hash">{_e(h["work_root"])}</span>'),
        ("reports root", f'<span class="hash">{_e(h["reports_root"])}</span>'),
    ]
    header = table(["field", "value"], fields, id="header-table", cls="fields")
    shapley = ""
    if clients and h["s_avg"]:
        shapley = "<h2>Averaged S (S̄) and the winner's S</h2>" + bars([c[:12] for c in clients], h["s_avg"])
        shapley += table(
            ["client", "S̄", "S of the winner", "paid"],
            [
                (account_link(c), f"{s:+.6f}", f"{w:+.6f}", _e(rewards.get(c, 0)))
                for c, s, w in zip(clients, h["s_avg"], h["s_winner"], strict=False)
            ],
            id="payments-table",
        )
    tx_rows = [
        (
            _e(t["kind"]),
            account_link(t["sender"]) if len(t["sender"]) == 64 else _e(t["sender"]),
            account_link(t["recipient"]),
            _e(t["amount"]),
            _e(t.get("memo", "")),
        )
        for t in txs
    ]
    body = (
        header
        + shapley
        + "<h2>Transactions</h2>"
        + table(["kind", "from", "to", "amount", "memo"], tx_rows, id="tx-table")
    )
    return page(f"Block {height}", body)


def account_page(balance: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    acct = balance["account"]
    rows = [
        (
            block_link(t["height"]),
            _e(t["kind"]),
            "out" if t["sender"] == acct else "in",
            account_link(t["recipient"] if t["sender"] == acct else t["sender"])
            if len(t["sender"]) == 64
            else _e(t["sender"][:12]),
            _e(t["amount"]),
            _e(t.get("memo", "")),
        )
        for t in history
    ]
    body = (
        f'<p>Account <span class="hash" id="account">{_e(acct)}</span></p>'
        f'<p>Balance <b id="balance">{int(balance["balance"])}</b> at height {int(balance["height"])}, '
        f"nonce {int(balance['nonce'])}</p><h2>History</h2>"
        + ("" if rows else '<p class="note">No transaction on the main chain.</p>')
        + table(["block", "kind", "", "counterparty", "amount", "memo"], rows, id="history-table")
    )
    return page(f"Account {acct[:12]}", body)


# --- FL server pages -----------------------------------------------------------------------------
def tasks_page(tasks: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            f'<a href="/explorer/tasks/{_e(t["task_id"])}">{_e(t["task_id"])}</a>',
            _e(t["status"]),
            _e(t["budget"]),
            _e(t["rounds"]),
        )
        for t in tasks
    ]
    empty = "" if rows else '<p class="note">No training task yet.</p>'
    return page(
        "Training tasks", empty + table(["task", "status", "budget V", "rounds"], rows, id="tasks-table"), role="server"
    )


def task_page(task: Mapping[str, Any], miner_url: str = "") -> str:
    prices = task.get("prices", {})
    body = (
        f'<p>Status <b id="status">{_e(task["status"])}</b>; budget V = {_e(task["budget"])} '
        f"(train {_e(prices.get('train'))}, com {_e(prices.get('com'))}, sap {_e(prices.get('sap'))}); "
        f"{len(task.get('round_results', []))} of {_e(task['rounds'])} rounds settled</p>"
    )
    if task.get("error"):
        body += f'<p class="error">{_e(task["error"])}</p>'
    acc_rows = []
    for r in task.get("round_results", []):
        m = r.get("metrics", {})
        block = (
            f'<a href="{_e(miner_url)}/explorer/blocks/{int(r["block_height"])}">{int(r["block_height"])}</a>'
            if miner_url
            else _e(r["block_height"])
        )
        acc_rows.append(
            (_e(r["round"]), block, f"{m.get('accuracy', float('nan')):.3f}", f"{m.get('loss', float('nan')):.4f}")
        )
    body += "<h2>Rounds</h2>" + table(["round", "block", "accuracy", "loss"], acc_rows, id="rounds-table")
    for r in task.get("round_results", []):
        rewards: dict[str, int] = {}
        for p in r.get("payments", {}).get("reward", []):
            rewards[p["to"]] = rewards.get(p["to"], 0) + int(p["amount"])
        body += f"<h2>Round {int(r['round'])}: Shapley values and payments</h2>"
        body += bars([c[:12] for c in r["clients"]], r["shapley"])
        body += table(
            ["client", "S̄", "paid"],
            [
                (account_link(c, miner_url), f"{s:+.6f}", _e(rewards.get(c, 0)))
                for c, s in zip(r["clients"], r["shapley"], strict=False)
            ],
            id=f"round-{int(r['round'])}-table",
        )
    return page(f"Task {task['task_id']}", body, role="server")


def static_file(name: str) -> tuple[bytes, str] | None:
    """The explorer's stylesheet or script (package data), and its media type; None for any other name."""
    media = {"explorer.css": "text/css", "explorer.js": "text/javascript"}.get(name)
    if media is None:
        return None
    return resources.files("fedcoin.node").joinpath("static", name).read_bytes(), media
