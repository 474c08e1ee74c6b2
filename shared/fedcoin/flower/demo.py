"""A Flower app paid on FedCoin, all on this machine: what ``make flower-demo`` runs.

1. a FedCoin network of miners as local processes (:mod:`fedcoin.devnet.local`; its genesis
   admits the FL server's key and funds the requester's);
2. one FedCoin key per Flower client (``Identity.generate``, saved 0600 under the work
   directory; each SuperNode gets its own path in its node config, ``fedcoin-key``);
3. Flower's deployment runtime: ``flower-superlink`` and one ``flower-supernode`` per client on
   loopback, insecure, with ``FLWR_HOME`` in the work directory;
4. ``flwr run APP --stream`` with the FedCoin settings as run config, then the run's status
   (``flwr ls``) and the results the ServerApp wrote.

Run: ``python -m fedcoin.flower.demo --app examples/flower`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from fedcoin.chain.identity import Identity
from fedcoin.client import MinerClient
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.errors import InvalidInput, Unavailable

CONNECTION = "fedcoin-local"


def _toml_str(value: str) -> str:
    return "'" + value.replace("'", "") + "'"


class FlowerFederation:
    """A SuperLink and ``len(keys)`` SuperNodes as local processes (see the module docstring)."""

    def __init__(self, work: Path, keys: list[Path], *, port: int, node_port: int) -> None:
        self.work, self.keys, self.port, self.node_port = work, keys, port, node_port
        self.home = work / "flwr-home"
        self.logs = work / "logs"
        self.procs: list[subprocess.Popen[bytes]] = []
        bindir = str(Path(sys.executable).parent)  # flower-superexec is started by name
        self.env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }

    def _bin(self, name: str) -> str:
        found = shutil.which(name, path=self.env["PATH"])
        if found is None:
            raise Unavailable(f"{name} not found: install the flower extra (pip install 'fedcoin[flower]')")
        return found

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout: float = 120) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        link = self._spawn(
            "superlink",
            [
                self._bin("flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                break
            if link.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"flower-superlink did not start; see {self.logs / 'superlink.log'}")
            time.sleep(0.2)
        n = len(self.keys)
        for i, key in enumerate(self.keys):
            node_config = f"partition-id={i} num-partitions={n} fedcoin-key={_toml_str(str(key))}"
            cmd = [self._bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}"]
            self._spawn(f"supernode{i}", [*cmd, "--port", str(self.node_port + i), "--node-config", node_config])
        for i in range(n):
            path = self.logs / f"supernode{i}.log"
            while "SuperNode ID" not in path.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise Unavailable(f"flower-supernode {i} did not register; see {path}")
                time.sleep(0.2)

    def run(self, app: Path, run_config: dict[str, Any], timeout: float) -> dict[str, Any]:
        """``flwr run`` the app to its end; the run's record from ``flwr ls`` (InvalidInput if it failed)."""
        parts = []
        for k, v in run_config.items():
            parts.append(f"{k}={_toml_str(v) if isinstance(v, str) else v}")
        cmd = [self._bin("flwr"), "run", str(app), CONNECTION, "--stream", "--run-config", " ".join(parts)]
        out = self.logs / "flwr-run.log"
        with out.open("wb") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, timeout=timeout, check=False)
        text = out.read_text(errors="replace")
        marker = "Successfully started run "
        if marker not in text:
            raise Unavailable(f"flwr run did not start a run; see {out}:\n{text[-2000:]}")
        run_id = text.split(marker, 1)[1].split()[0]
        ls = subprocess.run(
            [self._bin("flwr"), "ls", "--run-id", run_id, "--format", "json", CONNECTION],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        try:
            record = json.loads(ls.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise Unavailable(f"flwr ls gave no record of run {run_id}: {ls.stdout[-500:]}{ls.stderr[-500:]}") from exc
        if record.get("status") != "finished:completed":
            raise InvalidInput(f"Flower run {run_id} ended {record.get('status')}: {record.get('status-details', '')}")
        return dict(record)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


@contextlib.contextmanager
def _started(net: LocalNetwork, names: list[str]) -> Iterator[LocalNetwork]:
    try:
        net.start_all(names)
        net.wait_healthy(names, timeout=180)
        yield net
    finally:
        net.stop_all()


def run_flower_demo(
    app: Path,
    work: Path,
    *,
    clients: int = 10,
    rounds: int = 2,
    budget: int = 1_000_000,
    miners: int = 4,
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    base_port: int = 18600,
    timeout: float = 1200,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the Flower app ``app`` paid on a new local FedCoin network under ``work``; its summary:
    the ServerApp's results per round (``rounds``), the clients' accounts by partition, the miners'
    balances of those accounts, and wall times."""
    app, work = Path(app).resolve(), Path(work).resolve()
    if not (app / "pyproject.toml").exists():
        raise InvalidInput(f"{app} is not a Flower app (no pyproject.toml)")
    t0 = time.monotonic()
    specs = plan_network(
        work / "fedcoin", miners=miners, base_port=base_port, default_task=False, initial_difficulty=0.05
    )
    keys = {s.name: s.env["FEDCOIN_KEY"] for s in specs if "FEDCOIN_KEY" in s.env}
    names = [s.name for s in specs if s.role == "miner"]
    net = LocalNetwork(work / "fedcoin", specs)
    client_keys = []
    for i in range(clients):
        path = work / "client-keys" / f"client{i}.key"
        Identity.load_or_create(path)
        client_keys.append(path)
    accounts = [Identity.load(p).account for p in client_keys]
    fed = FlowerFederation(work, client_keys, port=base_port + 90, node_port=base_port + 50)
    with _started(net, names):
        miner_urls = [net.url(n) for n in names]
        say(f"{miners} FedCoin miners up after {time.monotonic() - t0:.1f} s: {', '.join(miner_urls)}")
        try:
            fed.start()
            t_fl = time.monotonic()
            say(f"Flower SuperLink and {clients} SuperNodes up after {t_fl - t0:.1f} s")
            out = work / "flower-results.json"
            fed.run(
                app,
                {
                    "num-server-rounds": rounds,
                    "min-clients": clients,
                    "dataset": dataset,
                    "data-dir": data_dir or "",
                    "fedcoin-server-key": keys["server"],
                    "fedcoin-requester-key": keys["requester"],
                    "fedcoin-miners": ",".join(miner_urls),
                    "fedcoin-budget": budget,
                    "fedcoin-out": str(out),
                },
                timeout=timeout,
            )
            run_s = time.monotonic() - t_fl
        finally:
            fed.stop()
        results = json.loads(out.read_text())
        last = results["rounds"][-1]
        with MinerClient(miner_urls[-1]) as miner:
            balances = {a: miner.balance(a).balance for a in accounts}
            if miner.head().height < last["block_height"]:
                raise Unavailable(f"{miner_urls[-1]} is below the last round's block {last['block_height']}")
    return {
        **results,
        "accounts": accounts,
        "balances": balances,
        "flwr_run_seconds": run_s,
        "total_seconds": time.monotonic() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--app", type=Path, default=Path("examples/flower"), help="the Flower app's directory")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a new temporary one)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=int, default=1_000_000)
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory of MNIST-format IDX files")
    ap.add_argument("--base-port", type=int, default=18600)
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    a = ap.parse_args(argv)
    work = a.dir or Path(tempfile.mkdtemp(prefix="fedcoin-flower-"))
    summary = run_flower_demo(
        a.app,
        work,
        clients=a.clients,
        rounds=a.rounds,
        budget=a.budget,
        dataset=a.dataset,
        data_dir=a.data_dir,
        base_port=a.base_port,
    )
    part = {acct: i for i, acct in enumerate(summary["accounts"])}
    for r in summary["rounds"]:
        rewards = {p["to"]: p["amount"] for p in r["payments"].get("reward", [])}
        print(f"round {r['round']}: block {r['block_height']}, validation accuracy {r['metrics']['accuracy']:.3f}")
        print(f"  {'client':>6}  {'labels':>6}  {'account':<16}  {'Shapley':>9}  {'paid':>7}")
        for acct, s in sorted(zip(r["clients"], r["shapley"], strict=True), key=lambda x: part[x[0]]):
            i = part[acct]
            print(f"  {i:>6}  {10 - i:>6}  {acct[:16]}  {s:+9.4f}  {rewards.get(acct, 0):>7}")
    print(
        f"flwr run: {summary['flwr_run_seconds']:.1f} s for {len(summary['rounds'])} rounds; "
        f"total {summary['total_seconds']:.1f} s; work directory {work}"
    )
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
