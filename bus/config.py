"""Configuration: one TOML file plus environment overrides; every setting has a default."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from bus.credentials import Credentials, from_environment

__all__ = [
    "CacheConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "ExecutorConfig",
    "GatewayConfig",
    "HealthConfig",
    "HostConfig",
    "HostKind",
    "LoadOptions",
    "MetricsConfig",
    "ModelLimits",
    "ModelsConfig",
    "NatsConfig",
    "ReasoningConfig",
    "RecorderConfig",
    "RouterConfig",
    "RoutingConfig",
    "check",
    "load_config",
]

Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]

DEFAULT_ROLES = {
    "primary": "qwen2.5:72b-instruct-fp16",
    "fast": "mistral:7b-instruct-fp16",
    "vision": "llava:34b",
    "mathematical": "phi3:14b",
    "backup": "llama3.3:70b",
}


DEFAULT_WEIGHTS = {"primary": 1.0, "fast": 0.7, "vision": 0.8, "mathematical": 0.6, "backup": 0.5}


class ConfigError(ValueError):
    """The configuration file or environment holds something unusable (one line each)."""


class NatsConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the bus is; without `url` ollamesh starts an embedded nats-server."""

    url: str | None = None
    # The embedded server's port; 0 takes a free one.
    port: Annotated[int, Meta(ge=0, le=65535)] = 4222
    data_dir: str | None = None
    # Copies of every stream and bucket ollamesh provisions: 3 on a 3-node cluster, so
    # losing a node loses no work, event, chunk or bucket entry (at most the cluster's size).
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    # How long chunks stay replayable after a request ends.
    chunk_max_age_s: Positive = 600.0
    event_max_age_s: Positive = 7 * 24 * 3600.0
    connect_timeout_s: Positive = 5.0
    # Who ollamesh is to the server (or NATS_CREDS, NATS_NKEY, NATS_USER and
    # NATS_PASSWORD, NATS_TOKEN); unset: nobody, the embedded server's local user.
    auth: Credentials = msgspec.field(default_factory=Credentials)


class DatabaseConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Where durable state lives; without `url` ollamesh starts an embedded Postgres."""

    url: str | None = None
    # The embedded server's data directory (default: $XDG_DATA_HOME/ollamesh/postgres).
    data_dir: str | None = None
    pool_max: PositiveInt = 10
    connect_timeout_s: Positive = 10.0


class CacheConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The answer cache: each router's memory, the shared tier in NATS, Postgres."""

    ttl_s: Positive = 3600.0
    # Hottest answers each router keeps in memory.
    memory_entries: Annotated[int, Meta(ge=0)] = 10_000
    # Size bound of the shared tier and of the table; the oldest answers go first.
    max_bytes: PositiveInt = 256 * 1024 * 1024
    purge_every_s: Positive = 60.0


class MetricsConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The Prometheus endpoint of each process."""

    # None: no endpoint; 0: any free port. A port already taken is logged and skipped.
    port: Annotated[int, Meta(ge=0, le=65535)] | None = 9464
    host: str = "0.0.0.0"


class RecorderConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """How the stats recorder writes request events to Postgres."""

    # Rows per insert at most ...
    batch_max: PositiveInt = 500
    # ... and the longest a finished request waits to be written.
    flush_s: Positive = 1.0
    # After a failed write, the batch is retried after this long, doubling up to the max.
    retry_s: Positive = 0.5
    retry_max_s: Positive = 10.0


class RouterConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Admission limits."""

    max_num_predict: PositiveInt = 32768
    # Beyond this a request is refused with payload_too_large even if the server takes it.
    max_request_bytes: PositiveInt = 8 * 1024 * 1024
    max_concurrent: PositiveInt = 1024


class ModelLimits(Struct, forbid_unknown_fields=True, kw_only=True):
    """A model's rate limits, shared by every router: requests and tokens per minute."""

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None


class RoutingConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Which model and which host serve a request, and the limits on the way there."""

    strategy: Literal["round-robin", "least-loaded", "adaptive", "weighted"] = "adaptive"
    # Which host among those serving the model takes the next request.
    host_strategy: Literal["round-robin", "least-loaded", "adaptive"] = "adaptive"
    # A host without the model loaded takes its work only when every warm host is busy,
    # or when work has waited this long.
    cold_after_ms: Annotated[float, Meta(ge=0)] = 2000.0
    # Waiting requests per model and priority before new ones get `overloaded`.
    queue_max: PositiveInt = 1000
    # Per role or model name; unlisted models are unlimited.
    limits: dict[str, ModelLimits] = msgspec.field(default_factory=dict)
    # A request over a rate limit with no deadline of its own waits at most this long.
    limit_wait_ms: Annotated[float, Meta(ge=0)] = 0.0
    # Roles (or model names) balanced over when no task rule applies.
    candidates: list[str] = msgspec.field(default_factory=lambda: ["primary", "fast", "backup"])
    # A request asking for fewer tokens than this goes to the `fast` role.
    fast_below_num_predict: Annotated[int, Meta(ge=0)] = 500
    # Where a model's work goes when it has no healthy host, no host has it, or it times out
    # before its first token: per model or role, else `default_fallbacks`.
    fallbacks: dict[str, list[str]] = msgspec.field(default_factory=dict)
    default_fallbacks: list[str] = msgspec.field(default_factory=lambda: ["backup"])
    # Share of traffic per role or model name (1.0 when not listed).
    weights: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


class ExecutorConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """How executors talk to their Ollama hosts."""

    max_inflight_per_model: PositiveInt = 4
    # Per host URL, when a host runs more or fewer parallel requests (OLLAMA_NUM_PARALLEL).
    host_slots: dict[str, PositiveInt] = msgspec.field(default_factory=dict)
    connect_timeout_s: Positive = 2.0
    # A cold 70B model can take a minute to load before its first token.
    first_token_timeout_s: Positive = 120.0
    idle_timeout_s: Positive = 30.0
    total_timeout_s: Positive = 600.0
    coalesce_ms: Annotated[float, Meta(ge=0)] = 4.0
    # Work goes back to the queue this many times before the client gets an error.
    max_attempts: PositiveInt = 5
    retry_backoff_ms: PositiveInt = 100
    retry_backoff_max_ms: PositiveInt = 2000
    # Work whose executor sends no keep-alive for this long is delivered again: the bound
    # on how long a dead executor's requests go unanswered.
    ack_wait_s: Positive = 4.0
    tags_refresh_s: Positive = 5.0
    registry_ttl_s: Positive = 15.0
    # After this many host failures in a row a model's circuit opens on that host ...
    circuit_failures: PositiveInt = 3
    # ... and stays open this long before one probe request decides.
    circuit_cooldown_s: Positive = 5.0
    # ... or when failures went on this long without a success in between.
    circuit_window_s: Positive = 5.0
    shutdown_grace_s: Positive = 30.0


class HealthConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The health monitor: how it checks hosts, and what it keeps loaded or pulls."""

    interval_s: Positive = 5.0
    # One check (version, tags, ps together) that takes longer has failed.
    timeout_s: Positive = 2.0
    # A check slower than this (or a partial failure) makes the host `degraded`.
    slow_ms: Positive = 1000.0
    # A pull taking longer has failed (big models take many minutes on slow links).
    pull_timeout_s: Positive = 3600.0
    # Roles (or models) kept loaded on every host that has them (keep_alive forever).
    pin: list[str] = msgspec.field(default_factory=list)
    # Roles (or models) loaded when a host comes up, then left to Ollama's keep_alive.
    warm: list[str] = msgspec.field(default_factory=list)
    # Pull the models of every role onto each host that lacks them (the old `autoPull`).
    auto_pull: bool = False
    # Start `ollama serve` for a local host that is down, if the binary exists (`autoStart`).
    auto_start: bool = False

    @property
    def entry_ttl_s(self) -> float:
        """How long a health entry or pull marker outlives the monitor refreshing it."""
        return max(30.0, 6 * self.interval_s)


class GatewayConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The HTTP gateway: Ollama's API in front of the fleet."""

    # Loopback by default: without API keys the gateway is open to whoever reaches it.
    host: str = "127.0.0.1"
    # 11435: Ollama's own port (11434) stays free for a host on the same machine. 0: any.
    port: Annotated[int, Meta(ge=0, le=65535)] = 11435
    # The largest request body read (a bigger one is 413).
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    # A request body that has not arrived in full after this long is a 408.
    body_timeout_s: Positive = 30.0
    # How long answers under way may finish when the gateway stops.
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 10.0
    # Without API keys the gateway listens on loopback whatever `host` says, and serves
    # only clients on its own machine, unless this is true (a proxy in front that
    # authenticates, a private network). With keys, `host` is used as it is.
    allow_open: bool = False
    # How often each gateway reads the API keys again (every change is applied at once).
    keys_reload_s: Positive = 30.0
    # With Postgres unreachable, the keys read last stay in force this long; then every
    # route answers 503 until they can be read again (never open access).
    keys_max_age_s: Positive = 90.0


class ReasoningConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The reasoning coordinator: which role does what, how many chains at once."""

    # Roles (or models) for each part of a chain; `mathematical` steps go to that role
    # when it is configured, else to `solve`'s.
    decompose: str = "fast"
    solve: str = "primary"
    synthesise: str = "primary"
    # Chains one coordinator runs at once (more wait in the queue for any coordinator).
    max_chains: PositiveInt = 16
    # The context a prompt must fit in when a request sets no `num_ctx` (Ollama's default).
    context_tokens: PositiveInt = 4096


HostKind = Literal["ollama", "openai"]
HOST_KINDS: tuple[HostKind, ...] = ("ollama", "openai")
DEFAULT_HOST = "http://127.0.0.1:11434"


class HostConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """One model host (`[[hosts]]`): where it is, which API it speaks, how many requests
    it runs at once."""

    url: str
    # `ollama`: Ollama's native API. `openai`: an OpenAI-compatible engine (llama.cpp's
    # llama-server, vLLM, SGLang, LM Studio).
    kind: HostKind = "ollama"
    # Parallel requests; unset: `executor.host_slots`, else what the engine says
    # (llama.cpp's `/props`), else `executor.max_inflight_per_model`.
    slots: PositiveInt | None = None


class ModelsConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """How the fleet names models."""

    # A backend's own model id (a GGUF file name, a Hugging Face repo) -> the fleet's
    # name for it, so hosts of any kind serve one model under one name.
    aliases: dict[str, str] = msgspec.field(default_factory=dict)


class LoadOptions(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Options that make Ollama reload a model when they change: fixed per model."""

    num_ctx: PositiveInt | None = None
    num_batch: PositiveInt | None = None
    num_gpu: Annotated[int, Meta(ge=0)] | None = None
    num_thread: PositiveInt | None = None


class Config(Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything `ollamesh up` needs."""

    prefix: str = "llm"
    # Host URLs; `openai+http://gpu-3:8080` is an OpenAI-compatible engine. With neither
    # these nor `[[hosts]]`, the local Ollama (http://127.0.0.1:11434).
    ollama_hosts: list[str] | None = None
    hosts: list[HostConfig] = msgspec.field(default_factory=list)
    models: ModelsConfig = msgspec.field(default_factory=ModelsConfig)
    roles: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_ROLES))
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    recorder: RecorderConfig = msgspec.field(default_factory=RecorderConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    router: RouterConfig = msgspec.field(default_factory=RouterConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    executor: ExecutorConfig = msgspec.field(default_factory=ExecutorConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    reasoning: ReasoningConfig = msgspec.field(default_factory=ReasoningConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    # Load-time options per model or role, applied to every request over the client's.
    load_options: dict[str, LoadOptions] = msgspec.field(default_factory=dict)
    log_format: str = "auto"
    log_level: str = "info"

    def host_list(self) -> list[HostConfig]:
        """Every host of the fleet: `[[hosts]]`, then `ollama_hosts` (their kind read from
        a scheme prefix), URLs without a trailing slash; the local Ollama if none."""
        slots = {url.rstrip("/"): n for url, n in self.executor.host_slots.items()}
        out = []
        for host in self.hosts:
            url = host.url.rstrip("/")
            out.append(HostConfig(url=url, kind=host.kind, slots=host.slots or slots.get(url)))
        urls = self.ollama_hosts
        if urls is None:
            urls = [] if self.hosts else [DEFAULT_HOST]
        for entry in urls:
            kind, url = split_kind(entry)
            out.append(HostConfig(url=url, kind=kind, slots=slots.get(url)))
        return out


def split_kind(entry: str) -> tuple[HostKind, str]:
    """`openai+http://h:8080` -> ("openai", "http://h:8080"); a plain URL is Ollama's."""
    scheme, sep, rest = entry.strip().partition("+")
    if sep and scheme in HOST_KINDS:
        return scheme, rest.rstrip("/")
    return "ollama", entry.strip().rstrip("/")


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Read the documented environment variables into the shape of the TOML file."""
    out: dict[str, Any] = {}
    nats: dict[str, Any] = {}
    if url := env.get("NATS_URL"):
        nats["url"] = url
    if auth := from_environment(env):
        nats["auth"] = auth
    if nats:
        out["nats"] = nats
    if url := env.get("DATABASE_URL"):
        out["database"] = {"url": url}
    if hosts := env.get("OLLAMA_HOSTS"):
        # The hosts named here are the fleet: they replace the file's `[[hosts]]` too.
        out["ollama_hosts"] = [h.strip() for h in hosts.split(",") if h.strip()]
        out["hosts"] = []
    if prefix := env.get("OLLAMESH_PREFIX"):
        out["prefix"] = prefix
    if port := env.get("OLLAMESH_GATEWAY_PORT"):
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"OLLAMESH_GATEWAY_PORT is a port (0-65535), not {port!r}")
        out["gateway"] = {"port": int(port)}
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load `path` (or `$OLLAMESH_CONFIG`, or nothing) and apply environment overrides."""
    env = os.environ if env is None else env
    path = path or env.get("OLLAMESH_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    raw = _merge(raw, _env_overrides(env))
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    if problems := check(config):
        raise ConfigError("\n".join(problems))
    return config


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("auto", "json", "console")
_PREFIX = re.compile(r"\A[A-Za-z0-9_-]{1,32}\Z")


def check(config: Config) -> list[str]:
    """Every problem of a decoded configuration, one line each naming the setting.

    Names that stand for models (candidates, fallbacks, weights, limits, pins, warm-up,
    load options) must be a role or a model name with its tag (`name:tag`) or namespace
    (`ns/name`): a bare word that is no role is a misspelt role far more often than a
    model, and would otherwise route to a model no host has.
    """
    problems: list[str] = []
    if not _PREFIX.match(config.prefix):
        problems.append(
            f"prefix: {config.prefix!r} is not a subject token ([A-Za-z0-9_-], 1 to 32)"
        )
    if config.log_level.lower() not in _LOG_LEVELS:
        problems.append(f"log_level: {config.log_level!r}; one of {', '.join(_LOG_LEVELS)}")
    if config.log_format not in _LOG_FORMATS:
        problems.append(f"log_format: {config.log_format!r}; one of {', '.join(_LOG_FORMATS)}")
    problems += _hosts(config)
    for url in config.executor.host_slots:
        problems += _url(f"executor.host_slots[{url!r}]", url)
    problems += _names(config)
    problems += _timeouts(config)
    return problems


def _hosts(config: Config) -> list[str]:
    if config.ollama_hosts == [] and not config.hosts:
        return ["ollama_hosts is empty (and no [[hosts]]): name at least one host"]
    problems = []
    for i, entry in enumerate(config.ollama_hosts or []):
        prefix = entry.partition("://")[0].partition("+")
        if prefix[1] and prefix[0] not in HOST_KINDS:
            kinds = ", ".join(f"{k}+" for k in HOST_KINDS)
            problems.append(f"ollama_hosts[{i}]: {entry!r} names no kind of host ({kinds})")
            continue
        problems += _url(f"ollama_hosts[{i}]", split_kind(entry)[1])
    for i, host in enumerate(config.hosts):
        problems += _url(f"hosts[{i}].url", host.url)
    seen: set[str] = set()
    for host in config.host_list():
        if host.url in seen:
            problems.append(f"host {host.url} is named twice (hosts, ollama_hosts)")
        seen.add(host.url)
    for own, name in config.models.aliases.items():
        if not own.strip() or not name.strip():
            problems.append(f"models.aliases: {own!r} = {name!r} needs both names")
        elif name in config.roles:
            problems.append(
                f"models.aliases.{own}: {name!r} is a role; alias the model the role names"
            )
    return problems


def _url(setting: str, url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{setting}: {url!r} is not an http:// or https:// URL with a host"]
    try:
        parts.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        return [f"{setting}: {url!r} has a port that is not a number from 0 to 65535"]
    return []


def _names(config: Config) -> list[str]:
    roles, routing, health = config.roles, config.routing, config.health

    def named(setting: str, name: str) -> list[str]:
        if name in roles or ":" in name or "/" in name:
            return []
        return [
            f"{setting}: {name!r} is no role ({', '.join(sorted(roles))}) and no model name"
            f" with a tag (e.g. '{name}:latest')"
        ]

    problems = [f"roles.{role} is empty" for role, model in roles.items() if not model.strip()]
    for setting, names in (
        ("routing.candidates", routing.candidates),
        ("routing.default_fallbacks", routing.default_fallbacks),
        # The default weights name every default role, configured or not.
        ("routing.weights", [w for w in routing.weights if w not in DEFAULT_WEIGHTS]),
        ("routing.limits", list(routing.limits)),
        ("routing.fallbacks", list(routing.fallbacks)),
        ("health.pin", health.pin),
        ("health.warm", health.warm),
        ("reasoning.decompose", [config.reasoning.decompose]),
        ("reasoning.solve", [config.reasoning.solve]),
        ("reasoning.synthesise", [config.reasoning.synthesise]),
        ("load_options", list(config.load_options)),
    ):
        problems += [p for name in names for p in named(setting, name)]
    for key, chain in routing.fallbacks.items():
        problems += [p for name in chain for p in named(f"routing.fallbacks.{key}", name)]
    return problems


def _timeouts(config: Config) -> list[str]:
    ex, health, recorder = config.executor, config.health, config.recorder
    rules = [
        (ex.first_token_timeout_s <= ex.total_timeout_s,
         "executor.first_token_timeout_s is over executor.total_timeout_s"),
        (ex.idle_timeout_s <= ex.total_timeout_s,
         "executor.idle_timeout_s is over executor.total_timeout_s"),
        (ex.retry_backoff_ms <= ex.retry_backoff_max_ms,
         "executor.retry_backoff_ms is over executor.retry_backoff_max_ms"),
        (ex.tags_refresh_s < ex.registry_ttl_s,
         "executor.registry_ttl_s must be over executor.tags_refresh_s (entries would"
         " expire before they are refreshed)"),
        (health.timeout_s <= health.interval_s,
         "health.timeout_s is over health.interval_s"),
        (health.slow_ms <= health.timeout_s * 1000,
         "health.slow_ms is over health.timeout_s"),
        (recorder.retry_s <= recorder.retry_max_s,
         "recorder.retry_s is over recorder.retry_max_s"),
        (config.gateway.keys_reload_s <= config.gateway.keys_max_age_s,
         "gateway.keys_reload_s is over gateway.keys_max_age_s (the keys would count as"
         " unreadable between two reads)"),
    ]  # fmt: skip
    return [message for holds, message in rules if not holds]
