"""The reasoning coordinator's wire contract: a query in, a chain of steps and an answer out.

`reason` takes a `ReasonRequest`; its stream (`<prefix>.v1.stream.<chain_id>`) carries a
`step` message whenever a step starts, finishes or fails, then the synthesis as ordinary
chunks, then one `done` (with the chain's steps and answer) or one `error`, all numbered
by one `seq`. `reason.get` and `reason.list` read stored chains back.
"""

from __future__ import annotations

import enum
from typing import Annotated

from msgspec import Meta, Struct

from schemas.requests import LANGUAGES, DeadlineMs, Language, Name, Options, Priority

__all__ = [
    "LANGUAGES",
    "Chain",
    "ChainState",
    "ChainSummary",
    "Chains",
    "ReasonGet",
    "ReasonList",
    "ReasonRequest",
    "ReasonRoles",
    "Step",
    "StepKind",
    "StepResult",
    "StepState",
]

# A chain's id is a request id, and its steps' requests take ids made from it.
ChainId = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_-]{1,48}\Z")]
MaxSteps = Annotated[int, Meta(ge=1, le=32)]


class StepKind(enum.StrEnum):
    """What a step is: arithmetic goes to the `mathematical` role."""

    GENERAL = "general"
    MATHEMATICAL = "mathematical"


class StepState(enum.StrEnum):
    """Where a step is."""

    PLANNED = "planned"
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


class ChainState(enum.StrEnum):
    """Where a chain is."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ReasonRoles(Struct, kw_only=True, omit_defaults=True):
    """Which role (or model) does each part; unset, the coordinator's configuration."""

    decompose: Name | None = None
    solve: Name | None = None
    synthesise: Name | None = None


class ReasonRequest(Struct, kw_only=True, omit_defaults=True):
    """`reason`: answer `query` by planning steps, solving them, and synthesising."""

    query: Annotated[str, Meta(max_length=100_000)]
    # The chain's id (generated if absent); its stream is `<prefix>.v1.stream.<id>`.
    request_id: ChainId | None = None
    roles: ReasonRoles | None = None
    max_steps: MaxSteps = 8
    # Options for every model call of the chain (e.g. temperature, num_ctx).
    options: Options | None = None
    deadline_ms: DeadlineMs | None = None
    priority: Priority = Priority.INTERACTIVE
    stream: bool = True
    language: Language = "en"


class Step(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="step"):
    """A step started, finished or failed (a message of the chain's stream)."""

    request_id: str  # the chain's id
    seq: int = 0
    step_id: str
    text: str
    depends_on: list[str] = []
    kind: StepKind = StepKind.GENERAL
    state: StepState = StepState.STARTED
    model: str = ""
    host: str = ""
    answer: str | None = None
    error: str | None = None
    at: float = 0.0


class StepResult(Struct, kw_only=True, omit_defaults=True):
    """One step of a chain as stored and reported at the end."""

    step_id: str
    text: str
    depends_on: list[str] = []
    kind: StepKind = StepKind.GENERAL
    state: StepState = StepState.PLANNED
    model: str = ""
    host: str = ""
    answer: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    started_at: float | None = None
    finished_at: float | None = None


class ReasonGet(Struct, kw_only=True, forbid_unknown_fields=True):
    """`reason.get`: one stored chain."""

    chain_id: ChainId


class ReasonList(Struct, kw_only=True, forbid_unknown_fields=True):
    """`reason.list`: the latest chains, newest first."""

    limit: Annotated[int, Meta(ge=1, le=500)] = 20


class Chain(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="chain"):
    """A stored chain: its query, plan, steps, answer or error."""

    chain_id: str
    query: str
    state: ChainState
    language: Language = "en"
    steps: list[StepResult] = []
    warnings: list[str] = []
    answer: str | None = None
    error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None


class ChainSummary(Struct, kw_only=True, omit_defaults=True):
    """One line of `reason.list`."""

    chain_id: str
    query: str
    state: ChainState
    steps: int = 0
    created_at: float = 0.0
    finished_at: float | None = None


class Chains(Struct, kw_only=True, tag_field="type", tag="chains"):
    """The answer of `reason.list`."""

    chains: list[ChainSummary]
