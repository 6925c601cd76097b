"""The construction analyzer: HOAI fees with their analysis, site safety, questions,
material surveys, stored and read back.

`<prefix>.v1.construction.{hoai,safety,query,quantities,get,list}` (request/reply, one
queue group for every replica). Whatever can be computed without a model is computed
here, exactly, and given to the model as fact; the model is reached through the public
subjects like any client's. Every result is stored under an id; the same input again is
answered from the store unless the request says `fresh`.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import asyncpg
import msgspec
from nats.aio.msg import Msg

from actors.construction import hoai, quantities, query, safety
from actors.construction.fees import hoai_fee
from actors.construction.store import AnalysisStore
from actors.store.sink import unreachable_as
from bus.actor import Actor
from bus.client import Client
from bus.config import Config
from bus.connection import Connection
from bus.errors import BadRequest
from bus.rpc import decode_body
from bus.subjects import Subjects
from schemas import GenerateResult, encode
from schemas.construction import (
    Analyses,
    Analysis,
    AnalysisGet,
    AnalysisKind,
    AnalysisList,
    HoaiRequest,
    HoaiResult,
    QuantitiesRequest,
    QuantitiesResult,
    QueryRequest,
    QueryResult,
    SafetyRequest,
    SafetyResult,
)

__all__ = ["ConstructionAnalyzer", "input_hash"]

_QUEUE = "construction"
_DATABASE = "the construction database"
_decode_result = msgspec.json.Decoder(
    HoaiResult | SafetyResult | QueryResult | QuantitiesResult
).decode
A = TypeVar("A", bound=Analysis)


class _Request(Protocol):
    """What every verb's request has: whether to analyse again, and its project."""

    fresh: bool
    project_id: str | None


def input_hash(request: Any) -> str:
    """What identifies an input: the request, `fresh` aside, in a fixed key order."""
    canonical = msgspec.structs.replace(request, fresh=False)
    return hashlib.sha256(msgspec.json.encode(canonical, order="deterministic")).hexdigest()


def _wrote(result: A, answer: GenerateResult) -> A:
    """`result` with the model's text, and who wrote it."""
    result.text, result.model, result.host = answer.response, answer.model, answer.host
    return result


def _from_store(output: bytes, created_at: float) -> bytes:
    """A stored result, marked as coming from the store."""
    result = _decode_result(output)
    result.stored, result.created_at = True, created_at
    return encode(result)


class ConstructionAnalyzer(Actor):
    """Construction analyses as a service of the fleet."""

    name = "construction"

    def __init__(
        self, nc: Connection, subjects: Subjects, config: Config, pool: asyncpg.Pool
    ) -> None:
        super().__init__(nc, subjects)
        self.store = AnalysisStore(pool)
        # A client of the fleet like any other, on this process's connection.
        self.client = Client(nc=nc, prefix=subjects.prefix, timeout=config.executor.total_timeout_s)
        self.roles = frozenset(config.roles)

    async def setup(self) -> None:
        verbs = {
            "hoai": self._hoai, "safety": self._safety, "query": self._query,
            "quantities": self._quantities,
            "get": self._get, "list": self._list,
        }  # fmt: skip
        for verb, handler in verbs.items():
            await self.serve(self.subjects.construction(verb), handler, queue=_QUEUE)

    async def _hoai(self, msg: Msg) -> bytes:
        request = decode_body(HoaiRequest, msg.data, "construction.hoai")
        fee = hoai_fee(request)  # a bad input is a bad_request before any model is asked

        async def make() -> HoaiResult:
            result = HoaiResult(fee=fee)
            if request.analysis:
                _wrote(result, await hoai.analyse(self.client, request, fee))
            return result

        return await self._answer(AnalysisKind.HOAI, request, make)

    async def _safety(self, msg: Msg) -> bytes:
        request = decode_body(SafetyRequest, msg.data, "construction.safety")

        async def make() -> SafetyResult:
            answer = await safety.analyse(self.client, request)
            findings, structured = safety.read_findings(answer.response)
            if not structured:
                self.log.warning("safety_read_from_text", model=answer.model)
            return _wrote(SafetyResult(findings=findings, structured=structured), answer)

        return await self._answer(AnalysisKind.SAFETY, request, make)

    async def _query(self, msg: Msg) -> bytes:
        request = decode_body(QueryRequest, msg.data, "construction.query")
        if not request.query.strip():
            raise BadRequest("query is empty")

        async def make() -> QueryResult:
            kind, classified = await query.classify(self.client, request)
            if not classified:
                self.log.warning("query_not_classified", fallback=kind.value)
            answer = await query.answer(self.client, request, kind, self.roles)
            score, markers = query.confidence(answer.response)
            found, when = query.figures(kind, answer.response)
            result = QueryResult(
                query_type=kind, classified=classified, confidence=score, markers=markers,
                quantities=found, dates=when,
            )  # fmt: skip
            return _wrote(result, answer)

        return await self._answer(AnalysisKind.QUERY, request, make)

    async def _quantities(self, msg: Msg) -> bytes:
        request = decode_body(QuantitiesRequest, msg.data, "construction.quantities")
        if isinstance(request.specifications, str) and not request.specifications.strip():
            raise BadRequest("specifications are empty")
        elements = [] if isinstance(request.specifications, str) else request.specifications
        ours = [c for c in map(quantities.compute, elements) if c is not None]

        async def make() -> QuantitiesResult:
            answer = await quantities.analyse(self.client, request, ours)
            survey, structured = quantities.read_survey(answer.response)
            if not structured:
                self.log.warning("quantities_not_structured", model=answer.model)
            checked = [quantities.check(c, survey) for c in ours]
            result = QuantitiesResult(survey=survey, structured=structured, computed=checked)
            return _wrote(result, answer)

        return await self._answer(AnalysisKind.QUANTITIES, request, make)

    async def _answer(
        self, kind: AnalysisKind, request: _Request, make: Callable[[], Awaitable[Analysis]]
    ) -> bytes:
        """The stored result for this input (unless `fresh`), or a new one, stored."""
        started = time.perf_counter()
        key = input_hash(request)
        if not request.fresh:
            with unreachable_as(_DATABASE):
                found = await self.store.latest(kind, key)
            if found is not None:
                return _from_store(*found)
        result = await make()
        result.analysis_id = uuid.uuid4().hex
        result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        with unreachable_as(_DATABASE):
            result.created_at = await self.store.put(
                result.analysis_id, kind, request.project_id, key, encode(result),
                text=result.text, model=result.model, duration_ms=result.duration_ms,
            )  # fmt: skip
        self.log.info(
            "analysis_stored", kind=kind.value, analysis_id=result.analysis_id,
            model=result.model, duration_ms=result.duration_ms,
        )  # fmt: skip
        return encode(result)

    async def _get(self, msg: Msg) -> bytes:
        ask = decode_body(AnalysisGet, msg.data, "construction.get")
        with unreachable_as(_DATABASE):
            found = await self.store.get(ask.analysis_id)
        if found is None:
            raise BadRequest(f"no analysis {ask.analysis_id}")
        return _from_store(*found)

    async def _list(self, msg: Msg) -> bytes:
        ask = decode_body(AnalysisList, msg.data, "construction.list")
        with unreachable_as(_DATABASE):
            analyses = await self.store.recent(ask.kind, ask.project_id, ask.limit)
        return encode(Analyses(analyses=analyses))
