"""Typed settings of every role, read once from ``FEDCOIN_*`` environment variables.

One pydantic-settings model per role (:class:`MinerSettings`,
:class:`ServerSettings`, :class:`ClientSettings`, :class:`RequesterSettings`),
all sharing :class:`NodeSettings`. A field ``foo_bar`` is read from
``FEDCOIN_FOO_BAR``; an empty variable counts as unset. :func:`load` parses them
once, at start-up, and a bad value fails there with a :class:`SettingsError`
that names the variable. Lists are comma-separated (``FEDCOIN_PEERS=http://a:1,http://b:2``).

The defaults are defined here and nowhere else: the README's configuration
tables and the services' docstrings are rendered from these models
(:func:`markdown_table`, :func:`describe`), and the paper scripts read them
with :func:`default`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, FilePath, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fedcoin.errors import InvalidInput, SettingsError

ENV_PREFIX = "FEDCOIN_"

#: Process environment every service starts with, unless the operator set it. glibc gives each
#: thread that allocates its own malloc arena; a node's request, gossip, mining and torch
#: threads then fragment ~8 arenas and its RSS creeps up task after task (measured by
#: ``make soak``: +1.3 to +1.9 MiB per task on two of four miners, flat with 2 arenas).
SERVICE_ENV = {"MALLOC_ARENA_MAX": "2"}


def service_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with :data:`SERVICE_ENV` filled in where it does not set a value."""
    return {**SERVICE_ENV, **base}


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Metric = Literal["neg_loss", "accuracy"]
Dataset = Literal["fashion-mnist", "mnist"]
UrlList = Annotated[list[str], NoDecode]


def parse_types(spec: str) -> list[int]:
    """Client quality types from "0-9", "0,3,5" or "0-9,0-9" (one logical client per entry)."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError as exc:
        raise InvalidInput(f"client types must look like 0-9 or 0,3,5, got {spec!r}") from exc
    if not out or any(t < 0 for t in out):
        raise InvalidInput(f"client types must list non-negative types, got {spec!r}")
    return out


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _network(value: str) -> str:
    value = value.strip()
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value):
            raise ValueError(f"{value!r} is neither an IP network (CIDR) nor a host name") from None
    return value


def _network_list(value: Any) -> Any:
    if isinstance(value, str):
        return [_network(x) for x in value.split(",") if x.strip()]
    if isinstance(value, list):
        return [_network(str(x)) for x in value]
    return value


def _url_list(value: Any) -> Any:
    if isinstance(value, str):
        return [_url(x) for x in value.split(",") if x.strip()]
    return value


class NodeSettings(BaseSettings):
    """What every service reads."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)
    ROLE: ClassVar[str] = "node"
    DEFAULT_PORT: ClassVar[int] = 8000

    data_dir: Path | None = Field(
        None, description="state directory (SQLite, keys, content); default `.fedcoin/<role>`"
    )
    key: Path | None = Field(
        None, description="the node's Ed25519 key file, created if absent; default `<data_dir>/<role>.key`"
    )
    port: int | None = Field(None, ge=1, le=65535, description="port the service listens on (set by the launcher)")
    log_level: LogLevel = Field("INFO", description="logging level")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or as one JSON object each (event, reason, height, ...)"
    )
    torch_threads: int = Field(1, ge=1, le=256, description="torch CPU threads")

    @property
    def state_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else Path(".fedcoin") / self.ROLE

    @property
    def key_path(self) -> Path:
        return self.key if self.key is not None else self.state_dir / f"{self.ROLE}.key"

    @property
    def listen_port(self) -> int:
        return self.port if self.port is not None else self.DEFAULT_PORT


class MinerSettings(NodeSettings):
    """A miner: PoSap on Shapley tasks, gossip with its peers, the chain over HTTP."""

    ROLE: ClassVar[str] = "miner"
    DEFAULT_PORT: ClassVar[int] = 8101

    genesis: FilePath = Field(description="the network's genesis.json (see `fedcoin testnet init`)")
    peers: UrlList = Field(default_factory=list, description="base URLs of the other miners, comma-separated")
    advertise_url: str | None = Field(None, description="this miner's own URL (dropped from the peers if listed)")
    device: str | None = Field(None, description="torch device of the Shapley engine; default CUDA when present")
    batch: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="PoSap iterations between two checks of the win condition; default 4 on the CPU and 64 on "
        "a GPU, where the engine values them in one batch (about 5x the iterations/s)",
    )
    report_interval: float = Field(0.25, ge=0, le=3600, description="seconds between two gossiped PoSap reports")
    sync_interval: float = Field(2.0, gt=0, le=3600, description="seconds between two polls of the peers' heads")
    verify_samples: int = Field(
        16, ge=0, le=4096, description="leaves of each block's work log this miner recomputes (secretly chosen)"
    )

    _peers = field_validator("peers", mode="before")(_url_list)

    @field_validator("advertise_url")
    @classmethod
    def _advertise(cls, v: str | None) -> str | None:
        return None if v is None else _url(v)

    @property
    def other_peers(self) -> list[str]:
        return [p for p in self.peers if p != self.advertise_url]


class ServerSettings(NodeSettings):
    """The FL server: training tasks, FedAvg rounds with the clients, a Shapley task per round."""

    ROLE: ClassVar[str] = "server"
    DEFAULT_PORT: ClassVar[int] = 8001

    genesis: FilePath = Field(description="the network's genesis.json (read at start to fail fast)")
    miners: UrlList = Field(default_factory=list, description="base URLs of the miners, comma-separated")
    advertise_url: str = Field("http://127.0.0.1:8001", description="this server's URL as miners and clients reach it")
    dataset: Dataset = Field("fashion-mnist", description="dataset of the validation set")
    dataset_dir: Path | None = Field(None, description="directory of its IDX files; default Debian's fashion-mnist")
    val_size: int = Field(1000, ge=1, description="validation samples (from the test split)")
    val_seed: int = Field(0, ge=0, description="seed of the validation sample")
    hidden: Annotated[tuple[int, ...], NoDecode] = Field(
        (200,), description="hidden layer sizes of the MLP, comma-separated"
    )
    model_seed: int = Field(0, ge=0, description="seed of the initial global model")
    local_iterations: int = Field(20, ge=1, le=10_000, description="local SGD steps per client and round")
    lr: float = Field(0.1, gt=0, le=10, description="clients' SGD learning rate")
    batch_size: int = Field(64, ge=1, le=65_536, description="clients' minibatch size")
    metric: Metric = Field("neg_loss", description="the Shapley utility F: `neg_loss` or `accuracy`")
    empty_value: Literal["global"] | float = Field(
        "global",
        description="v(∅): `global` (F of the round's starting model, so the values add up to the round's "
        "improvement) or a number (the paper: 0)",
    )
    min_clients: int = Field(1, ge=1, description="registered clients needed before the first round")
    client_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "localhost"],
        description="where clients may be reached: IP networks (CIDR) or host names, comma-separated; "
        "a registration whose URL's host is elsewhere is refused",
    )
    max_clients: int = Field(4096, ge=1, le=4096, description="client registrations kept (more are refused)")
    client_wait: float = Field(120.0, gt=0, description="seconds to wait for them")
    settle_timeout: float = Field(1800.0, gt=0, description="seconds to wait for a round's Shapley task to be settled")

    _miners = field_validator("miners", mode="before")(_url_list)
    _client_networks = field_validator("client_networks", mode="before")(_network_list)

    @field_validator("advertise_url")
    @classmethod
    def _advertise(cls, v: str) -> str:
        return _url(v)

    def allows_client_host(self, host: str) -> bool:
        """True when ``host`` (a client URL's host) is a listed host name, or every address it resolves to
        lies in a listed network."""
        nets, names = [], set()
        for item in self.client_networks:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                names.add(item.lower())
        if host.lower() in names:
            return True
        try:
            addrs = {ipaddress.ip_address(host)}
        except ValueError:
            try:
                addrs = {ipaddress.ip_address(ai[4][0]) for ai in socket.getaddrinfo(host, None)}
            except (OSError, ValueError):
                return False
        return bool(addrs) and all(any(a in n for n in nets) for a in addrs)

    @field_validator("hidden", mode="before")
    @classmethod
    def _hidden(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(int(x) for x in v.split(",") if x.strip())
        return v

    @field_validator("hidden")
    @classmethod
    def _hidden_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 1 for h in v):
            raise ValueError("hidden layer sizes must be positive")
        return v


class ClientSettings(NodeSettings):
    """An FL client node: one or more logical clients, each with its own key and data."""

    ROLE: ClassVar[str] = "client"
    DEFAULT_PORT: ClassVar[int] = 8002

    server_url: str = Field("http://127.0.0.1:8001", description="the FL server")
    miners: UrlList = Field(default_factory=list, description="miners, to read the clients' balances")
    advertise_url: str | None = Field(
        None, description="this node's URL as the server reaches it; default `http://<own address>:<port>`"
    )
    client_types: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: list(range(10)),
        description="quality types of the logical clients, e.g. `0-9` or `0,3,5`",
    )
    num_types: int = Field(10, ge=1, le=1000, description="number of quality types T of the partition")
    samples_per_client: int = Field(600, ge=1, description="training samples per client")
    dataset: Dataset = Field("fashion-mnist", description="training dataset")
    dataset_dir: Path | None = Field(None, description="directory of its IDX files; default Debian's fashion-mnist")

    _miners = field_validator("miners", mode="before")(_url_list)

    @field_validator("server_url", "advertise_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return None if v is None else _url(v)

    @field_validator("client_types", mode="before")
    @classmethod
    def _types(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return parse_types(v)
            except InvalidInput as exc:
                raise ValueError(str(exc)) from exc
        return v

    @property
    def own_url(self) -> str:
        if self.advertise_url is not None:
            return self.advertise_url
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
        return f"http://{host}:{self.listen_port}"


class RequesterSettings(NodeSettings):
    """The model requester: deposits a budget V with the server and follows its tasks."""

    ROLE: ClassVar[str] = "requester"
    DEFAULT_PORT: ClassVar[int] = 8000

    server_url: str = Field("http://127.0.0.1:8001", description="the FL server")
    miners: UrlList = Field(default_factory=list, description="miners, to read balances and send the deposit")
    default_task: bool = Field(True, description="submit one task at start (`on`/`off`)")
    default_task_id: str = Field("default", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="its task id")
    budget: int = Field(1_000_000, gt=0, le=2**63 - 1, description="its budget V in base units")
    rounds: int = Field(1, ge=1, le=100, description="its FL rounds")

    _miners = field_validator("miners", mode="before")(_url_list)

    @field_validator("server_url")
    @classmethod
    def _server(cls, v: str) -> str:
        return _url(v)


ROLES: dict[str, type[NodeSettings]] = {
    "miner": MinerSettings,
    "server": ServerSettings,
    "client": ClientSettings,
    "requester": RequesterSettings,
}

S = TypeVar("S", bound=NodeSettings)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load(cls: type[S], **overrides: Any) -> S:
    """Parse ``cls`` from the environment (and ``overrides``); a bad value raises a
    :class:`SettingsError` naming each offending variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            problems.setdefault(env_name(field), []).append(f"{err['msg']}{shown}")
        text = "; ".join(f"{name}: {' or '.join(msgs)}" for name, msgs in problems.items())
        raise SettingsError(f"bad {cls.ROLE} settings: {text}") from None


def default(cls: type[NodeSettings], field: str) -> Any:
    """The default of one setting, as defined on ``cls``."""
    info = cls.model_fields[field]
    return info.get_default(call_default_factory=True)


def _shown_default(cls: type[NodeSettings], field: str) -> str:
    info = cls.model_fields[field]
    if info.is_required():
        return "required"
    value = default(cls, field)
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        ints = all(isinstance(x, int) for x in value)
        if ints and len(value) > 1 and list(value) == list(range(value[0], value[0] + len(value))):
            return f"`{value[0]}-{value[-1]}`"  # a run of consecutive ints, as the variable is written
        return "`" + ",".join(str(x) for x in value) + "`" if value else "—"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    return f"`{value}`"


def markdown_table(cls: type[NodeSettings]) -> str:
    """The README table of one role's settings."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in cls.model_fields.items():
        lines.append(f"| `{env_name(name)}` | {_shown_default(cls, name)} | {info.description or ''} |")
    return "\n".join(lines)


def describe(cls: type[NodeSettings]) -> str:
    """Plain-text list of one role's settings, for a service's docstring and OpenAPI description."""
    lines = [f"Settings ({cls.__name__}, from the environment):", ""]
    for name, info in cls.model_fields.items():
        lines.append(f"  {env_name(name)} = {_shown_default(cls, name).strip('`')}: {info.description or ''}")
    return "\n".join(lines)
