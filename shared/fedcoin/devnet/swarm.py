"""The compose testbed on Docker Swarm: a stack file derived from ``docker-compose.yml``, never a
second copy of the service definitions, and the steps around ``docker stack deploy``.

What :func:`stack_from_compose` changes, and why:

* optional services (a ``profiles`` entry: Prometheus) are left out, and the one-shot
  ``init`` service goes too: the genesis and the keys are made on the manager before
  the deploy (:func:`fedcoin.devnet.testnet.init_testnet`) and reach the services as a Docker
  **config** (``genesis.json``) and Docker **secrets** (each node's key, mode 0400, owned by the
  image's ``fedcoin`` user), not through a shared volume, which a swarm of several hosts does not
  have; ``FEDCOIN_KEY`` names the secret's file;
* build, ``pull_policy``, ``depends_on`` and ``restart`` go (swarm ignores or refuses them): a
  ``deploy`` section takes their place, with a restart policy, the client node's replica count
  and, for miner ``i``, the placement constraint ``node.labels.fedcoin.miner<i> == true`` (label
  one node per miner and the miners land on different nodes);
* services are found by DNS round robin (``endpoint_mode: dnsrr``), not behind a virtual IP:
  every identity is one replica, client replicas advertise their own addresses, and a VIP
  needs the kernel's IPVS, which not every host has (this project's CI machine has none);
* ports are published in host mode on the node that runs the task (``127.0.0.1:`` bindings
  cannot be expressed in a stack, and the ingress mesh needs a VIP);
* networks become attachable overlays; named volumes stay, each local to the node of its task.

Health checks are kept as they are. Everything else (environment, images, networks of each
service) is the compose file's own.
"""

from __future__ import annotations

import copy
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcoin.client import MinerClient, RequesterClient, ServiceClient
from fedcoin.errors import FedcoinError, InvalidInput, NotFound, Unavailable

from .testnet import init_testnet

STACK = "fedcoin"
IMAGE_UID = "10001"  # the image's fedcoin user (Dockerfile)
DROPPED_KEYS = ("build", "pull_policy", "depends_on", "restart", "container_name")
MINER_RE = re.compile(r"miner(\d+)$")


def _key_name(env: dict[str, Any]) -> str | None:
    """The key file a service's FEDCOIN_KEY names in the init volume (``/net/miner1.key`` -> ``miner1.key``)."""
    key = env.get("FEDCOIN_KEY")
    return None if key is None else Path(str(key)).name


def stack_from_compose(compose: dict[str, Any], net_dir: Path, *, clients: int = 1) -> dict[str, Any]:
    """The swarm stack of a compose testbed (see the module docstring); ``net_dir`` holds the
    genesis and keys (``fedcoin testnet init``)."""
    if "services" not in compose or "init" not in compose["services"]:
        raise InvalidInput("not the FedCoin compose file: no init service")
    src = copy.deepcopy(compose)
    services: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for name, svc in src["services"].items():
        if name == "init" or svc.get("profiles"):  # optional services (monitoring) are compose-only
            continue
        for k in DROPPED_KEYS:
            svc.pop(k, None)
        env = dict(svc.get("environment") or {})
        svc["volumes"] = [v for v in svc.get("volumes", []) if not str(v).startswith("net:")]
        if not svc["volumes"]:
            svc.pop("volumes")
        svc["configs"] = [{"source": "genesis", "target": str(env.get("FEDCOIN_GENESIS", "/net/genesis.json"))}]
        key = _key_name(env)
        if key is not None:
            secret = f"{name}-key"
            secrets[secret] = {"file": str(net_dir / key)}
            svc["secrets"] = [{"source": secret, "target": key, "uid": IMAGE_UID, "gid": IMAGE_UID, "mode": 0o400}]
            env["FEDCOIN_KEY"] = f"/run/secrets/{key}"
        svc["environment"] = env
        ports = []
        for p in svc.get("ports", []):
            host, _, target = str(p).rpartition(":")
            published = host.rpartition(":")[2]
            ports.append({"target": int(target), "published": int(published), "protocol": "tcp", "mode": "host"})
        if ports:
            svc["ports"] = ports
        deploy: dict[str, Any] = {
            "replicas": clients if name == "client" else 1,
            "endpoint_mode": "dnsrr",
            "restart_policy": {"condition": "any", "delay": "5s"},
        }
        m = MINER_RE.fullmatch(name)
        if m:
            deploy["placement"] = {"constraints": [f"node.labels.fedcoin.miner{m.group(1)} == true"]}
        svc["deploy"] = deploy
        services[name] = svc
    return {
        "version": "3.8",
        "services": services,
        "networks": {n: {"driver": "overlay", "attachable": True} for n in src.get("networks", {})},
        "volumes": {v: (c or {}) for v, c in src.get("volumes", {}).items() if v != "net"},
        "secrets": secrets,
        "configs": {"genesis": {"file": str(net_dir / "genesis.json")}},
    }


def write_stack(compose_file: Path, out: Path, net_dir: Path, *, clients: int = 1) -> dict[str, Any]:
    """Read ``compose_file``, write the derived stack to ``out``; the stack."""
    import yaml

    stack = stack_from_compose(yaml.safe_load(compose_file.read_text()), net_dir.resolve(), clients=clients)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Derived from docker-compose.yml by `fedcoin testbed swarm-up` (fedcoin.devnet.swarm); do not edit.\n"
        + yaml.safe_dump(stack, sort_keys=False)
    )
    return stack


# --- the steps around docker stack deploy -----------------------------------------------------
def _docker(*args: str, timeout: float = 300, check: bool = True) -> str:
    try:
        r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"docker {' '.join(args[:3])}: {exc}") from exc
    if check and r.returncode != 0:
        raise Unavailable(f"docker {' '.join(args[:3])} failed: {(r.stderr or r.stdout).strip()[-1000:]}")
    return r.stdout.strip()


def swarm_state() -> str:
    """``active``, ``inactive`` (or another LocalNodeState) of this engine."""
    return _docker("info", "--format", "{{.Swarm.LocalNodeState}}")


def swarm_up(
    compose_file: Path,
    work: Path,
    *,
    stack: str = STACK,
    clients: int = 1,
    timeout: float = 600,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Deploy the testbed as ``stack``: a single-node swarm is created if this engine is in none
    (and remembered, so :func:`swarm_down` leaves it again), this node is labelled for every
    miner, a new genesis and keys are made in ``work``/net, and the stack is deployed; returns
    when every service answers ``/health`` on its published port. Times in the answer."""
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    created = work / "swarm-created-here"
    if swarm_state() != "active":
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        created.write_text("this directory's swarm-up created the swarm; swarm-down leaves it\n")
        say("swarm: initialised a single-node swarm (advertise 127.0.0.1)")
    node = _docker("info", "--format", "{{.Swarm.NodeID}}")
    compose = compose_file.read_text()
    miners = sorted({int(m) for m in re.findall(r"^  miner(\d+):", compose, flags=re.M)})
    _docker("node", "update", *[a for i in miners for a in ("--label-add", f"fedcoin.miner{i}=true")], node)
    net = work / "net"
    init_testnet(net, miners=len(miners))
    stack_file = work / "stack.yml"
    write_stack(compose_file, stack_file, net, clients=clients)
    _docker("stack", "deploy", "--compose-file", str(stack_file), stack, timeout=600)
    t_deploy = time.monotonic()
    say(f"swarm: stack {stack} deployed ({len(miners)} miners, {clients} client node(s)); waiting for health")
    urls = {"requester": "http://127.0.0.1:8000", "server": "http://127.0.0.1:8001"}
    urls.update({f"miner{i}": f"http://127.0.0.1:{8100 + i}" for i in miners})
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    while pending:
        for name, url in list(pending.items()):
            try:
                with ServiceClient(url, timeout=3) as c:
                    c.health()
                pending.pop(name)
            except FedcoinError:
                pass
        if pending and time.monotonic() > deadline:
            states = _docker("stack", "ps", stack, "--format", "{{.Name}} {{.CurrentState}} {{.Error}}", check=False)
            raise Unavailable(f"not healthy after {timeout:.0f} s: {sorted(pending)}\n{states}")
        if pending:
            time.sleep(2)
    healthy = time.monotonic()
    say(f"swarm: every service healthy {healthy - t_deploy:.1f} s after the deploy")
    return {
        "urls": urls,
        "deployed_at": time.time() - (time.monotonic() - t_deploy),
        "deploy_s": t_deploy - t0,
        "healthy_s": healthy - t_deploy,
        "stack_file": str(stack_file),
    }


def swarm_check(
    *,
    task_id: str = "default",
    timeout: float = 900,
    miners: list[str] | None = None,
    deployed_at: float | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Wait for the requester's task to be done, then check that its last block pays the clients
    all of TrainPrice and that every miner (``miners``: base URLs, by default the 4 of the compose
    file on 127.0.0.1) has it on its main chain. With ``deployed_at`` (epoch
    seconds, from :func:`swarm_up`), the answer has the seconds from the deploy to that block."""
    t0 = time.monotonic()
    with RequesterClient("http://127.0.0.1:8000", timeout=10) as req:
        while True:  # the requester submits its default task once the server takes it
            try:
                req.task(task_id)
                break
            except (NotFound, Unavailable):
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(2)
        task = req.wait(task_id, timeout=max(1.0, timeout - (time.monotonic() - t0)), poll=2)
    if task.server.status != "done":
        raise InvalidInput(f"task {task_id} ended {task.server.status}: {task.server.error}")
    t_paid = time.monotonic() - t0
    res = task.server.round_results[-1]
    rewards = sum(int(p["amount"]) for p in res.payments.get("reward", []))
    if rewards != task.server.prices["train"] // task.server.rounds or rewards <= 0:
        raise InvalidInput(f"the block pays the clients {rewards}, not the round's TrainPrice")
    heads = {}
    for url in miners or [f"http://127.0.0.1:{8100 + i}" for i in range(1, 5)]:
        deadline = time.monotonic() + 60
        with MinerClient(url, timeout=5) as m:
            while True:
                try:
                    block = m.block(res.block_height)
                    if block.hash == res.block_hash:
                        heads[url] = m.head().hash
                        break
                except FedcoinError:
                    pass
                if time.monotonic() > deadline:
                    raise InvalidInput(f"{url} does not hold block {res.block_height} {res.block_hash[:16]}")
                time.sleep(1)
    since = None if deployed_at is None else block.header.timestamp / 1000 - deployed_at
    say(
        f"swarm: task {task_id} paid in block {res.block_height}"
        + ("" if since is None else f", {since:.1f} s after the deploy")
        + f"; all {len(heads)} miners hold it"
    )
    return {
        "waited_s": t_paid,
        "block_after_deploy_s": since,
        "block_height": res.block_height,
        "rewards": rewards,
        "heads": heads,
    }


def swarm_down(work: Path, *, stack: str = STACK, say: Callable[[str], None] = print) -> None:
    """Remove the stack, its volumes, secrets and configs, this node's miner labels, and the swarm
    itself if :func:`swarm_up` created it."""
    if swarm_state() != "active":
        say("swarm: this engine is in no swarm; nothing to remove")
        return
    _docker("stack", "rm", stack, check=False)
    deadline = time.monotonic() + 120
    while _docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}", check=False):
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    volumes = _docker("volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}", check=False)
    for v in volumes.split():
        _docker("volume", "rm", "-f", v, check=False)
    node = _docker("info", "--format", "{{.Swarm.NodeID}}", check=False)
    labels = _docker("node", "inspect", node, "--format", "{{range $k, $v := .Spec.Labels}}{{$k}} {{end}}", check=False)
    mine = [k for k in labels.split() if k.startswith("fedcoin.miner")]
    if mine:
        _docker("node", "update", *[a for k in mine for a in ("--label-rm", k)], node, check=False)
    created = work / "swarm-created-here"
    if created.exists():
        _docker("swarm", "leave", "--force")
        created.unlink()
        say("swarm: left the swarm swarm-up had created")
    say(f"swarm: stack {stack} removed with its volumes")
