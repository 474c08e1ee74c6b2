"""The ``fedcoin`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import FedcoinError

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
def keygen(path: Path = typer.Argument(..., help="where to write the private key (mode 0600)"), overwrite: bool = False) -> None:
    """Create an Ed25519 identity and print its account id."""
    from .identity import Identity

    try:
        ident = Identity.generate()
        ident.save(path, overwrite=overwrite)
    except FedcoinError as exc:
        _fail(exc)
    console.print(ident.account)


@app.command()
def account(path: Path = typer.Argument(..., help="a private key file")) -> None:
    """Print the account id of a key file."""
    from .identity import Identity

    try:
        console.print(Identity.load(path).account)
    except FedcoinError as exc:
        _fail(exc)


@app.command()
def chain(
    db: Path = typer.Option(..., help="a node's SQLite chain file"),
    genesis: Path = typer.Option(..., help="the genesis configuration (JSON)"),
) -> None:
    """Print the main chain and balances stored in a node's chain file."""
    from .blocks import GenesisConfig
    from .ledger import Chain

    try:
        cfg = GenesisConfig.from_dict(json.loads(genesis.read_text()))
        ch = Chain.open(db, cfg)
    except (FedcoinError, OSError, json.JSONDecodeError) as exc:
        _fail(exc)
    _print_chain(ch)
    ch.close()


def _print_chain(ch) -> None:  # noqa: ANN001
    table = Table(title=f"chain (height {ch.height})")
    for col in ("height", "hash", "winner", "task", "D", "iterations", "txs"):
        table.add_column(col)
    for b in ch.main_chain():
        h = b.header
        table.add_row(str(h.height), b.hash[:16], h.winner[:12], h.task_id, f"{h.difficulty:.3g}", str(h.iterations), str(len(b.body.transactions)))
    console.print(table)
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
    json_out: Optional[Path] = typer.Option(None, "--json", help="write a summary here"),
) -> None:
    """Mine one block in-process: PoSap among miners on a toy data-quality game, then pay by Algorithm 3."""
    from .shapley import exact_shapley
    from .posap import marginals_from_utility
    from .simulate import demo_setup, quality_game, race

    qualities = [1.0 - 2.0 * i / (clients - 1) for i in range(clients)]  # from 1 (best) to -1 (worst)
    game = quality_game(qualities)
    requester, server, miner_ids, client_ids, chains, task, deposit = demo_setup(clients, miners, budget, difficulty)
    try:
        result = race(chains, miner_ids, task, marginals_from_utility(game, clients), gossip_every=gossip_every, transactions=[deposit])
    except FedcoinError as exc:
        _fail(exc)
    exact = exact_shapley(clients, game)
    block = result.block
    console.print(f"winner: miner {result.winner_index} ({block.header.winner[:16]}...) after {block.header.iterations} iterations; all {miners} chains at height {chains[0].height}")
    table = Table(title="Shapley values and payments")
    for col in ("client", "quality", "exact S", "block S̄", "paid"):
        table.add_column(col, justify="right")
    ch = chains[0]
    for i, c in enumerate(client_ids):
        table.add_row(str(i), f"{qualities[i]:+.2f}", f"{exact[i]:+.4f}", f"{block.header.s_avg[i]:+.4f}", str(ch.balance(c.account)))
    console.print(table)
    _print_chain(ch)
    assert all(c.head == ch.head for c in chains)
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


if __name__ == "__main__":
    app()
