"""The ``fedcoin`` command line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .api import RequesterTask
from .chain.blocks import Block
from .chain.genesis import GenesisConfig
from .chain.identity import Identity, check_account
from .client import MinerClient, RequesterClient
from .devnet.demo import DemoOutcome, follow_default_task
from .devnet.local import LocalNetwork, plan_network
from .devnet.simulation import demo_setup, race
from .devnet.testnet import DEFAULT_DIFFICULTY, DEFAULT_MINERS, init_testnet
from .errors import FedcoinError
from .ledger.chain import Chain
from .node.settings import ROLES, load, service_environment
from .valuation.exact import exact_shapley
from .valuation.games import quality_game
from .valuation.sampling import CoalitionGame

app = typer.Typer(help="FedCoin: blockchain-paid federated learning with Proof of Shapley.", no_args_is_help=True)
console = Console()


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def keygen(
    path: Path = typer.Argument(..., help="where to write the private key (mode 0600)"), overwrite: bool = False
) -> None:
    """Create an Ed25519 identity and print its account id."""
    try:
        ident = Identity.generate()
        ident.save(path, overwrite=overwrite)
    except FedcoinError as exc:
        _fail(exc)
    console.print(ident.account)


@app.command()
def account(path: Path = typer.Argument(..., help="a private key file")) -> None:
    """Print the account id of a key file."""
    try:
        console.print(Identity.load(path).account)
    except FedcoinError as exc:
        _fail(exc)


# --- the services' APIs, through fedcoin.client ---------------------------------------------------
MINER_URL = "http://127.0.0.1:8101"
SERVER_URL = "http://127.0.0.1:8001"
REQUESTER_URL = "http://127.0.0.1:8000"
_MINER = typer.Option(MINER_URL, "--node", envvar="FEDCOIN_MINER_URL", help="a miner's base URL")
_REQUESTER = typer.Option(REQUESTER_URL, "--node", envvar="FEDCOIN_REQUESTER_URL", help="the requester's base URL")
_JSON = typer.Option(False, "--json", help="print the answer as JSON")

chain_app = typer.Typer(help="A miner's chain (head, blocks), or a node's chain file (show).", no_args_is_help=True)
app.add_typer(chain_app, name="chain")
task_app = typer.Typer(help="Training tasks, through the model requester.", no_args_is_help=True)
app.add_typer(task_app, name="task")


def _dump(value: Any) -> None:
    """Print a model, a list of models or plain data as JSON on stdout."""
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    elif hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    typer.echo(json.dumps(value, indent=2))


def _account_arg(value: str) -> str:
    """An account id, or the account of a key file."""
    path = Path(value)
    if path.is_file():
        return Identity.load(path).account
    check_account(value)
    return value


@chain_app.command("head")
def chain_head(node: str = _MINER, as_json: bool = _JSON) -> None:
    """The miner's head: height, hash, difficulty."""
    try:
        with MinerClient(node) as c:
            head = c.head()
    except FedcoinError as exc:
        _fail(exc)
    if as_json:
        return _dump(head)
    console.print(
        f"height {head.height}  hash {head.hash}\nD {head.difficulty:.3g} (next {head.next_difficulty:.3g})  "
        f"genesis {head.genesis[:16]}"
    )


@chain_app.command("blocks")
def chain_blocks(
    start: int = typer.Option(0, min=0, help="first height"),
    end: int | None = typer.Option(None, min=0, help="last height (default: the head; 100 at most per page)"),
    node: str = _MINER,
    as_json: bool = _JSON,
) -> None:
    """The miner's main-chain blocks, as a table (or whole, with --json)."""
    try:
        with MinerClient(node) as c:
            blocks = c.blocks(start, end)
    except FedcoinError as exc:
        _fail(exc)
    if as_json:
        return _dump([b.to_dict() for b in blocks])
    _print_blocks(f"chain from {node}", blocks)


@chain_app.command("show")
def chain_show(
    db: Path = typer.Option(..., help="a node's SQLite chain file"),
    genesis: Path = typer.Option(..., help="the genesis configuration (JSON)"),
) -> None:
    """Print the main chain and balances stored in a node's chain file (no node running needed)."""
    try:
        ch = Chain.open(db, GenesisConfig.load(genesis))
    except (FedcoinError, OSError) as exc:
        _fail(exc)
    _print_chain(ch)
    ch.close()


def _print_blocks(title: str, blocks: Iterable[Block]) -> None:
    table = Table(title=title)
    for col in ("height", "hash", "winner", "task", "D", "iterations", "txs"):
        table.add_column(col)
    for b in blocks:
        h = b.header
        table.add_row(
            str(b.height),
            b.hash[:16],
            h.winner[:12],
            h.task_id,
            f"{h.difficulty:.3g}",
            str(h.iterations),
            str(len(b.body.transactions)),
        )
    console.print(table)


def _print_chain(ch: Chain) -> None:
    _print_blocks(f"chain (height {ch.height})", ch.main_chain_light())
    bal = Table(title="balances")
    bal.add_column("account")
    bal.add_column("balance", justify="right")
    for acct, amount in sorted(ch.balances().items()):
        bal.add_row(acct, str(amount))
    console.print(bal)


@app.command()
def simulate(
    clients: int = typer.Option(8, min=2, max=20, help="number of clients (players)"),
    miners: int = typer.Option(4, min=2, max=32),
    difficulty: float = typer.Option(1e-2, min=1e-9, help="D: the p-distance a winner must reach"),
    budget: int = typer.Option(1_000_000, min=1, help="V in base units"),
    gossip_every: int = typer.Option(5, min=1),
    json_out: Path | None = typer.Option(None, "--json", help="write a summary here"),
) -> None:
    """Mine one block in-process: PoSap among miners on a toy data-quality game, then pay by Algorithm 3."""
    qualities = [1.0 - 2.0 * i / (clients - 1) for i in range(clients)]  # from 1 (best) to -1 (worst)
    game = quality_game(qualities)
    _requester, _server, miner_ids, client_ids, chains, task, _deposit = demo_setup(clients, miners, budget, difficulty)
    try:
        result = race(chains, miner_ids, task, CoalitionGame(clients, game).marginals, gossip_every=gossip_every)
    except FedcoinError as exc:
        _fail(exc)
    exact = exact_shapley(clients, game)
    block = result.block
    console.print(
        f"winner: miner {result.winner_index} ({block.header.winner[:16]}...) after {block.header.iterations} "
        f"iterations; all {miners} chains at height {chains[0].height}"
    )
    table = Table(title="Shapley values and payments")
    for col in ("client", "quality", "exact S", "block S̄", "paid"):
        table.add_column(col, justify="right")
    ch = chains[0]
    for i, c in enumerate(client_ids):
        table.add_row(
            str(i),
            f"{qualities[i]:+.2f}",
            f"{exact[i]:+.4f}",
            f"{block.header.s_avg[i]:+.4f}",
            str(ch.balance(c.account)),
        )
    console.print(table)
    _print_chain(ch)
    if any(c.head != ch.head for c in chains):
        _fail(FedcoinError("the miners' chains disagree on the head"))
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                {
                    "head": ch.head,
                    "height": ch.height,
                    "winner": block.header.winner,
                    "iterations": result.iterations,
                    "exact_shapley": exact,
                    "block_s_avg": block.header.s_avg,
                    "payments": {c.account: ch.balance(c.account) for c in client_ids},
                    "balances": ch.balances(),
                    "supply": ch.head_state.total,
                },
                indent=2,
            )
        )


testnet = typer.Typer(help="Set up a network's shared files.")
app.add_typer(testnet, name="testnet")
testbed = typer.Typer(help="The compose testbed (Docker) and fault injection on a running network.")
app.add_typer(testbed, name="testbed")

COMPOSE_PROJECT = "fedcoin"


def _compose(project: str, *args: str, timeout: float = 1800) -> None:
    import shutil
    import subprocess

    base = ["docker", "compose"]
    if subprocess.run([*base, "version"], capture_output=True).returncode != 0:
        if shutil.which("docker-compose") is None:
            _fail(FedcoinError("neither `docker compose` nor docker-compose is installed"))
        base = ["docker-compose"]
    env = {**os.environ, "FEDCOIN_BASE_IMAGE": os.environ.get("FEDCOIN_BASE_IMAGE", "fedcoin-base:bookworm")}
    r = subprocess.run([*base, "-p", project, *args], env=env, timeout=timeout)
    if r.returncode != 0:
        _fail(FedcoinError(f"{' '.join(base)} {' '.join(args)} exited {r.returncode}"))


@testbed.command("up")
def testbed_up(project: str = typer.Option(COMPOSE_PROJECT, help="compose project name")) -> None:
    """Build the image and start the compose testbed (docker-compose.yml in the current directory)."""
    _compose(project, "up", "-d", "--build")
    console.print(f"testbed {project} up; `fedcoin testbed faults --backend docker` injects faults")


@testbed.command("down")
def testbed_down(project: str = typer.Option(COMPOSE_PROJECT, help="compose project name")) -> None:
    """Stop the compose testbed and delete its volumes."""
    _compose(project, "down", "-v", "--remove-orphans", timeout=600)


SWARM_DIR = Path("build/swarm")
_SWARM_DIR = typer.Option(SWARM_DIR, "--dir", help="where the genesis, keys and derived stack file go")
_STACK = typer.Option("fedcoin", "--stack", help="the stack's name")


@testbed.command("swarm-up")
def testbed_swarm_up(
    compose_file: Path = typer.Option(Path("docker-compose.yml"), "--compose-file", help="the testbed to derive from"),
    clients: int = typer.Option(1, min=1, max=32, help="client node replicas"),
    directory: Path = _SWARM_DIR,
    stack: str = _STACK,
    timeout: float = typer.Option(600.0, help="seconds to wait for every service to be healthy"),
) -> None:
    """Deploy the testbed on Docker Swarm (a single-node swarm is created if there is none)."""
    from .devnet.swarm import swarm_up

    try:
        out = swarm_up(compose_file, directory, stack=stack, clients=clients, timeout=timeout, say=console.print)
    except FedcoinError as exc:
        _fail(exc)
    (directory / "up.json").write_text(json.dumps(out, indent=2))


@testbed.command("swarm-check")
def testbed_swarm_check(
    task_id: str = typer.Option("default", "--task-id"),
    timeout: float = typer.Option(900.0, help="seconds to wait for the task"),
    directory: Path = _SWARM_DIR,
) -> None:
    """Wait for the requester's task on the swarm testbed: paid, and held by all four miners."""
    from .devnet.swarm import swarm_check

    up = json.loads((directory / "up.json").read_text()) if (directory / "up.json").exists() else {}
    miners = [u for name, u in up.get("urls", {}).items() if name.startswith("miner")] or None
    try:
        out = swarm_check(
            task_id=task_id, timeout=timeout, miners=miners, deployed_at=up.get("deployed_at"), say=console.print
        )
    except FedcoinError as exc:
        _fail(exc)
    (directory / "check.json").write_text(json.dumps(out, indent=2))


@testbed.command("swarm-down")
def testbed_swarm_down(directory: Path = _SWARM_DIR, stack: str = _STACK) -> None:
    """Remove the stack and its volumes; leave the swarm if swarm-up created it."""
    from .devnet.swarm import swarm_down

    try:
        swarm_down(directory, stack=stack, say=console.print)
    except FedcoinError as exc:
        _fail(exc)


@testbed.command("faults")
def testbed_faults(
    scenarios: list[str] = typer.Argument(None, help="scenarios to run (default: all)"),
    backend: str = typer.Option("auto", help="docker (a running compose testbed), local (processes) or auto"),
    project: str = typer.Option(COMPOSE_PROJECT, help="compose project of the docker backend"),
    base_port: int = typer.Option(19400, help="ports of the local network (local backend)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the outcomes here"),
    seed: int = typer.Option(0),
) -> None:
    """Inject faults into a running network while it settles a task, and check every invariant."""
    from .devnet.faults import SCENARIOS, DockerBackend, LocalBackend, Outcome, run_scenario

    names = scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        _fail(FedcoinError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}"))
    if backend == "auto":
        backend = "docker" if _docker_testbed_running(project) else "local"
    outcomes: list[Outcome] = []
    t0 = time.time()
    if backend == "docker":
        db = DockerBackend(project)
        for i, name in enumerate(names):
            outcomes.append(run_scenario(db, db.url("requester"), db.url("server"), name, seed=seed + i))
            _print_outcome_line(outcomes[-1])
    else:
        base = Path(tempfile.mkdtemp(prefix="fedcoin-faults-"))
        specs = plan_network(base, miners=4, base_port=base_port, default_task=False)
        with LocalNetwork(base, specs) as net:
            net.start_all()
            net.wait_healthy(timeout=180)
            lb = LocalBackend(net)
            for i, name in enumerate(names):
                outcomes.append(run_scenario(lb, net.url("requester"), net.url("server"), name, seed=seed + i))
                _print_outcome_line(outcomes[-1])
    doc = {"backend": backend, "seconds": time.time() - t0, "outcomes": [o.to_dict() for o in outcomes]}
    _print_faults_table(doc)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2))
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


@testbed.command("faults-report")
def testbed_faults_report(
    path: Path = typer.Argument(..., help="the --json file of `fedcoin testbed faults`"),
) -> None:
    """Print the outcomes a fault run wrote (e.g. after the testbed is down); exit 1 if one failed."""
    try:
        doc = json.loads(path.read_text())
        outcomes = doc["outcomes"]
    except (OSError, ValueError, KeyError) as exc:
        _fail(FedcoinError(f"{path}: not a fault report ({exc})"))
    _print_faults_table(doc)
    for o in outcomes:
        if o["status"] == "failed":
            console.print(f"FAILED {o['scenario']}: {o['detail']}")
    if any(o["status"] == "failed" for o in outcomes):
        raise typer.Exit(1)


def _print_faults_table(doc: dict[str, Any]) -> None:
    table = Table(title=f"faults ({doc['backend']} backend, {doc['seconds']:.0f} s)")
    for col in ("scenario", "status", "responsive s", "task done s", "converged s", "detail"):
        table.add_column(col)
    for o in doc["outcomes"]:
        t = o["timings"]
        table.add_row(
            o["scenario"],
            o["status"],
            *(f"{t[k]:.1f}" if k in t else "—" for k in ("responsive_s", "task_done_after_fault_s", "converged_s")),
            o["detail"][:80],
        )
    console.print(table)


def _print_outcome_line(o: Any) -> None:
    console.print(f"{o.scenario}: {o.status} {o.timings} {o.detail[:200]}")


def _docker_testbed_running(project: str) -> bool:
    try:
        import docker

        client = docker.from_env()
        return bool(client.containers.list(filters={"label": f"com.docker.compose.project={project}"}))
    except Exception:
        return False


@testnet.command("init")
def testnet_init(
    directory: Path = typer.Argument(..., help="where to write genesis.json and the keys"),
    difficulty: float = typer.Option(DEFAULT_DIFFICULTY, help="initial difficulty D"),
    miners: int = typer.Option(DEFAULT_MINERS, min=1, max=1024, help="miner keys to create and admit"),
    sampler: str | None = typer.Option(
        None, help="permutations the miners use and verifiers re-derive: uniform | stratified | paired (default)"
    ),
) -> None:
    """Create the requester's, server's and miners' keys and a genesis that funds the requester and
    admits the server and miners (idempotent)."""
    try:
        out = init_testnet(directory, initial_difficulty=difficulty, miners=miners, sampler=sampler)
    except FedcoinError as exc:
        _fail(exc)
    console.print_json(data=out)


@app.command()
def serve(
    role: str = typer.Argument(..., help="miner | server | client | requester"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000, min=1, max=65535),
) -> None:
    """Run one service (configured by FEDCOIN_* environment variables) under uvicorn."""
    if role not in ROLES:
        _fail(FedcoinError(f"role must be one of {', '.join(ROLES)}"))
    os.environ.setdefault("FEDCOIN_PORT", str(port))
    try:
        load(ROLES[role])  # a bad setting fails here, naming the variable, before uvicorn starts
    except FedcoinError as exc:
        _fail(exc)
    os.execvpe(
        sys.executable,
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"services.{role}.app:create_app",
            "--factory",
            "--host",
            host,
            "--port",
            str(port),
        ],
        service_environment(os.environ),
    )


@app.command()
def demo(
    miners: int = typer.Option(4, min=2, max=16),
    client_types: str = typer.Option("0-9", help="quality types of the clients, one client each"),
    budget: int = typer.Option(1_000_000, min=1, help="V in base units"),
    rounds: int = typer.Option(1, min=1, max=20),
    base_port: int = typer.Option(
        8000, min=1024, max=60000, help="requester port; server +1, client +2, miners +101.."
    ),
    directory: Path | None = typer.Option(None, "--dir", help="node state (default: a new temporary directory)"),
    dataset: str = typer.Option("fashion-mnist"),
    data_dir: Path | None = typer.Option(None, help="directory of MNIST-format IDX files"),
    json_out: Path | None = typer.Option(None, "--json", help="write a summary here"),
    serve_after: bool = typer.Option(False, "--serve", help="keep the network running after the task"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the task"),
    difficulty: float = typer.Option(DEFAULT_DIFFICULTY, help="initial difficulty D of a new network"),
) -> None:
    """Run the whole network as local processes, one paid training task end to end."""
    base = directory or Path(tempfile.mkdtemp(prefix="fedcoin-demo-"))
    specs = plan_network(
        base,
        miners=miners,
        client_types=client_types,
        base_port=base_port,
        budget=budget,
        rounds=rounds,
        dataset=dataset,
        dataset_dir=str(data_dir) if data_dir else None,
        initial_difficulty=difficulty,
    )
    console.print(
        f"[bold]FedCoin demo[/bold]: {miners} miners, clients of types {client_types}, V = {budget}; state in {base}"
    )
    t0 = time.time()
    with LocalNetwork(base, specs) as net:
        try:
            net.start_all()
            net.wait_healthy(timeout=180)
            console.print(f"all {len(specs)} services healthy after {time.time() - t0:.1f} s")
            outcome = follow_default_task(net, started=t0, timeout=timeout, on_progress=_progress_printer(t0))
        except FedcoinError as exc:
            console.print(f"[red]demo failed:[/red] {exc}; logs in {base / 'logs'}")
            raise typer.Exit(1) from exc
        _print_outcome(outcome, miners)
        if json_out is not None:
            json_out.write_text(json.dumps(outcome.summary(net), indent=2))
        if serve_after:
            console.print(
                "network running (Ctrl-C stops it): " + ", ".join(f"{n} {s.url}" for n, s in net.specs.items())
            )
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)


def _progress_printer(t0: float) -> Callable[[dict[str, Any] | None], None]:
    last: dict[str, Any] = {}

    def progress(doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        key = (doc["status"], len(doc.get("round_results", [])), bool(doc.get("pending_round")))
        if key != last.get("key"):
            last["key"] = key
            console.print(
                f"  [{time.time() - t0:6.1f} s] task {doc['task_id']}: {doc['status']}, "
                f"{len(doc.get('round_results', []))}/{doc['rounds']} rounds settled"
                + (", Shapley task published, miners racing" if doc.get("pending_round") else "")
            )

    return progress


def _print_outcome(outcome: DemoOutcome, miners: int) -> None:
    head = outcome.head
    console.print(
        f"task done in {outcome.seconds:.1f} s; all {miners} miners agree on head {head['hash'][:16]} "
        f"at height {head['height']}"
    )
    table = Table(title="chain")
    for col in ("height", "hash", "winner", "task", "D", "iterations", "txs"):
        table.add_column(col)
    for row in outcome.chain:
        table.add_row(
            str(row["height"]),
            row["hash"][:16],
            row["winner"][:12],
            row["task_id"],
            f"{row['difficulty']:.3g}",
            str(row["iterations"]),
            str(row["transactions"]),
        )
    console.print(table)
    for res in outcome.task["round_results"]:
        t = Table(
            title=f"round {res['round']}: block {res['block_height']}, winner {res['winner'][:12]}, "
            f"validation accuracy {res['metrics'].get('accuracy', float('nan')):.3f}"
        )
        for col in ("client", "type", "Shapley S̄", "paid"):
            t.add_column(col, justify="right")
        for row in outcome.shapley:
            if row["round"] == res["round"]:
                kind = "?" if row["type"] is None else str(row["type"])
                t.add_row(row["client"][:12], kind, f"{row['shapley']:+.5f}", str(row["paid"]))
        console.print(t)
    bal = outcome.balances
    console.print(f"supply {sum(bal['balances'].values())} = genesis {bal['supply']}")


@app.command()
def balance(
    account: str = typer.Argument(..., help="an account id, or a key file"),
    node: str = _MINER,
    as_json: bool = _JSON,
) -> None:
    """An account's balance and nonce on a miner's main chain."""
    try:
        acct = _account_arg(account)
        with MinerClient(node) as c:
            bal = c.balance(acct)
    except FedcoinError as exc:
        _fail(exc)
    if as_json:
        return _dump(bal)
    console.print(f"{bal.account}: {bal.balance} (nonce {bal.nonce}, height {bal.height})")


@app.command()
def transfer(
    key: Path = typer.Option(..., help="the sender's key file"),
    to: str = typer.Option(..., help="the recipient: an account id, or a key file"),
    amount: int = typer.Option(..., min=1, help="base units"),
    memo: str = typer.Option("", help="printable ASCII, up to 128 characters"),
    wait: float = typer.Option(0.0, min=0, help="seconds to wait for the transfer to be confirmed (0: do not wait)"),
    node: str = _MINER,
    as_json: bool = _JSON,
) -> None:
    """Sign a transfer with the key file and submit it to a miner (which gossips it to the others)."""
    try:
        identity = Identity.load(key)
        recipient = _account_arg(to)
        with MinerClient(node) as c:
            tx = c.transfer(identity, recipient, amount, memo)
            status = c.transaction(tx.txid)
            deadline = time.monotonic() + wait
            while status.status != "confirmed" and time.monotonic() < deadline:
                time.sleep(0.5)
                status = c.transaction(tx.txid)
    except FedcoinError as exc:
        _fail(exc)
    if as_json:
        return _dump(status)
    where = f" in block {status.height}" if status.status == "confirmed" else ""
    console.print(f"transfer {tx.txid[:16]}: {amount} to {recipient[:12]}, {status.status}{where}")
    if wait and status.status != "confirmed":
        raise typer.Exit(1)


@task_app.command("submit")
def task_submit(
    budget: int = typer.Option(..., min=1, help="V in base units, deposited with the FL server"),
    rounds: int = typer.Option(1, min=1, max=100, help="FedAvg rounds, one Shapley task and block each"),
    task_id: str | None = typer.Option(None, "--task-id", help="letters, digits, _ and - (default: generated)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the task until it ends"),
    timeout: float = typer.Option(3600.0, min=1, help="seconds to follow it"),
    node: str = _REQUESTER,
    as_json: bool = _JSON,
) -> None:
    """Submit a training task with its budget; with a live progress bar until its rounds are settled."""
    try:
        with RequesterClient(node) as c:
            created = c.submit(budget, rounds, task_id)
            if not wait:
                return (
                    _dump(created)
                    if as_json
                    else console.print(f"task {created.task_id} submitted (deposit {created.deposit_txid[:16]})")
                )
            final = _follow(c, created.task_id, rounds, timeout, quiet=as_json)
    except FedcoinError as exc:
        _fail(exc)
    if as_json:
        return _dump(final)
    _print_task(final)
    if final.server.status != "done":
        raise typer.Exit(1)


@task_app.command("status")
def task_status(task_id: str = typer.Argument(...), node: str = _REQUESTER, as_json: bool = _JSON) -> None:
    """A task's status, its settled rounds, Shapley values and payments."""
    try:
        with RequesterClient(node) as c:
            t = c.task(task_id)
    except FedcoinError as exc:
        _fail(exc)
    if as_json:
        return _dump(t)
    _print_task(t)


def _follow(c: RequesterClient, task_id: str, rounds: int, timeout: float, quiet: bool) -> RequesterTask:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("task {task.fields[tid]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds settled"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task("task", total=rounds, tid=task_id, status="submitted")

        def update(t: RequesterTask) -> None:
            status = t.server.status + (", miners racing" if getattr(t.server, "pending_round", None) else "")
            progress.update(bar, completed=len(t.server.round_results), status=status)

        return c.wait(task_id, timeout=timeout, poll=1.0, on_update=update)


def _print_task(t: RequesterTask) -> None:
    s = t.server
    console.print(
        f"task {t.task_id}: {s.status}, {len(s.round_results)}/{s.rounds} rounds settled; V = {s.budget} "
        f"(train {s.prices.get('train')}, com {s.prices.get('com')}, sap {s.prices.get('sap')})"
        + (f"; error: {s.error}" if s.error else "")
    )
    for res in s.round_results:
        paid: dict[str, int] = {}
        for p in res.payments.get("reward", []):
            paid[p["to"]] = paid.get(p["to"], 0) + int(p["amount"])
        acc = res.metrics.get("accuracy")
        table = Table(
            title=f"round {res.round}: block {res.block_height}, winner {res.winner[:12]}"
            + (f", validation accuracy {acc:.3f}" if isinstance(acc, float) else "")
        )
        table.add_column("client account", overflow="fold")
        for col in ("Shapley S̄", "paid"):
            table.add_column(col, justify="right", no_wrap=True)
        for client, value in zip(res.clients, res.shapley, strict=False):
            table.add_row(client, f"{value:+.5f}", str(paid.get(client, 0)))
        console.print(table)


if __name__ == "__main__":
    app()
