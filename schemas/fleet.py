"""The health monitor's wire contract: host states, the fleet view, model management."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from schemas.replies import Error
from schemas.requests import Name

__all__ = [
    "FleetStatus",
    "HealthQuery",
    "HostEvent",
    "HostHealth",
    "HostResult",
    "HostState",
    "LoadedModel",
    "ModelRow",
    "ModelsReply",
    "ModelsRequest",
    "PullProgress",
    "StoredModel",
    "Verb",
]

Verb = Literal["list", "show", "ps", "pull", "load", "unload", "delete", "copy"]
ModelName = Annotated[Name, Meta(min_length=1)]


class HostState(enum.StrEnum):
    """What the health monitor last concluded about a host."""

    UP = "up"
    # Answering, but slowly, or only in part (one of its endpoints fails).
    DEGRADED = "degraded"
    # Answering, but its engine is still loading its model (an OpenAI-compatible server's
    # `/health` says 503): not ready for work, and not down either.
    LOADING = "loading"
    DOWN = "down"


class StoredModel(Struct, kw_only=True, omit_defaults=True):
    """A model on a host's disk, as `/api/tags` lists it."""

    name: str
    size: int = 0
    digest: str = ""
    modified_at: str = ""
    family: str = ""
    parameter_size: str = ""
    quantization: str = ""


class LoadedModel(Struct, kw_only=True, omit_defaults=True):
    """A model in a host's memory, as `/api/ps` lists it."""

    name: str
    size: int = 0
    size_vram: int = 0
    expires_at: str = ""
    context_length: int = 0


class HostHealth(Struct, kw_only=True, omit_defaults=True):
    """One host as the monitor last saw it; kept in the health bucket for routers."""

    host: str
    state: HostState
    # The host's API: `ollama`, or `openai` (llama.cpp's llama-server, vLLM, SGLang...).
    kind: str = "ollama"
    reason: str = ""
    version: str = ""
    models: list[StoredModel] = []
    loaded: list[LoadedModel] = []
    # How long the last check's three calls took together.
    latency_ms: float | None = None
    # The engine's own parallel slots and how many are busy now (any client's requests),
    # where it says (llama.cpp's `/props` and `/slots`, or `/metrics`); Ollama does not.
    slots: int | None = None
    busy: int | None = None
    # Executors serving this host (from the registry): none means nothing pulls its work.
    executors: list[str] = []
    checked_at: float = 0.0
    # When the host entered `state`.
    since: float = 0.0


class HostEvent(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="host_state"):
    """A host changed state (on `<prefix>.v1.events.host`)."""

    host: str
    state: HostState
    previous: HostState | None = None
    reason: str = ""
    at: float = 0.0


class ModelRow(Struct, kw_only=True, omit_defaults=True):
    """One host x model cell of `ollamesh status`."""

    host: str
    model: str
    loaded: bool = False
    size_vram: int = 0
    in_flight: int = 0
    slots: int = 0
    ttft_ms_p50: float | None = None
    # `closed`, `open` (no work taken for now) or `none` (no executor serves the host).
    circuit: str = "none"


class FleetStatus(Struct, kw_only=True, tag_field="type", tag="fleet"):
    """The answer on `<prefix>.v1.health`: every host, and every model on each."""

    hosts: list[HostHealth]
    rows: list[ModelRow]
    at: float


class HealthQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    """`health`: the fleet view (no fields yet; sent as `{}`)."""


class ModelsRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """`models.<verb>`: a model (every verb but list and ps) on one host or on all.

    Without `host`, list and ps ask every host that is up; pull pulls onto every host
    that is up; show asks the first host that has the model; load, unload and delete act
    on every host that has it. `keep_alive` is load's (Ollama's duration: `"10m"`,
    seconds, `-1` forever); unset, a pinned model stays forever, any other 5 minutes.
    `destination` is copy's: the new name, on every host that has `model`.
    """

    model: ModelName | None = None
    host: Name | None = None
    keep_alive: float | str | None = None
    destination: ModelName | None = None


class HostResult(Struct, kw_only=True, omit_defaults=True):
    """What one host did with a models request."""

    host: str
    ok: bool = True
    error: Error | None = None
    models: list[StoredModel] | None = None
    loaded: list[LoadedModel] | None = None
    # `show`'s answer as Ollama gives it (details, parameters, template, capabilities...).
    info: dict[str, Any] | None = None
    # What happened: `pulled`, `joined` (an identical pull was under way), `loaded`...
    status: str = ""
    duration_ms: float = 0.0


class ModelsReply(Struct, kw_only=True, tag_field="type", tag="models"):
    """The answer on `<prefix>.v1.models.<verb>`: one result per host asked."""

    verb: Verb
    model: str | None = None
    results: list[HostResult] = []


class PullProgress(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="pull"):
    """Progress of one pull on one host (on `<prefix>.v1.events.pull.<host>.<model>`).

    `status` is Ollama's (`pulling manifest`, `pulling <digest>`, `verifying sha256
    digest`, `success`); `completed` and `total` are bytes of the layer being pulled.
    The last event has `done` set, and `error` if the pull failed.
    """

    host: str
    model: str
    status: str = ""
    digest: str = ""
    completed: int = 0
    total: int = 0
    done: bool = False
    error: Error | None = None
    at: float = 0.0
