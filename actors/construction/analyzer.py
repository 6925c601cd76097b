"""The construction analyzer: HOAI fees with their analysis, stored and read back.

`<prefix>.v1.construction.{hoai,get,list}` (request/reply, one queue group for every
replica). Whatever can be computed without a model is computed here, exactly, and given
to the model as fact; the model is reached through the public subjects like any
client's. Every result is stored under an id; the same input again is answered from the
store unless the request says `fresh`.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import asyncpg
import msgspec
from nats.aio.msg import Msg

from actors.construction.fees import hoai_fee
from actors.construction.hoai import analyse
from actors.construction.store import AnalysisStore
from actors.store.sink import unreachable_as
from bus.actor import Actor
from bus.client import Client
from bus.config import Config
from bus.connection import Connection
from bus.errors import BadRequest
from bus.rpc import decode_body
from bus.subjects import Subjects
from schemas import encode
from schemas.construction import (
    Analyses,
    AnalysisGet,
    AnalysisKind,
    AnalysisList,
    HoaiRequest,
    HoaiResult,
)

__all__ = ["ConstructionAnalyzer"]

_QUEUE = "construction"
_DATABASE = "the construction database"
_decode_hoai = msgspec.json.Decoder(HoaiResult).decode


def input_hash(request: msgspec.Struct) -> str:
    """What identifies an input: the request, `fresh` aside, in a fixed key order."""
    canonical = msgspec.structs.replace(request, fresh=False)
    return hashlib.sha256(msgspec.json.encode(canonical, order="deterministic")).hexdigest()


class ConstructionAnalyzer(Actor):
    """HOAI fees and their analysis, as a service of the fleet."""

    name = "construction"

    def __init__(
        self, nc: Connection, subjects: Subjects, config: Config, pool: asyncpg.Pool
    ) -> None:
        super().__init__(nc, subjects)
        self.store = AnalysisStore(pool)
        # A client of the fleet like any other, on this process's connection.
        self.client = Client(nc=nc, prefix=subjects.prefix, timeout=config.executor.total_timeout_s)

    async def setup(self) -> None:
        await self.serve(self.subjects.construction("hoai"), self._hoai, queue=_QUEUE)
        await self.serve(self.subjects.construction("get"), self._get, queue=_QUEUE)
        await self.serve(self.subjects.construction("list"), self._list, queue=_QUEUE)

    async def _hoai(self, msg: Msg) -> bytes:
        request = decode_body(HoaiRequest, msg.data, "construction.hoai")
        started = time.perf_counter()
        fee = hoai_fee(request)  # a bad input is a bad_request before any model is asked
        key = input_hash(request)
        if not request.fresh and (stored := await self._stored(AnalysisKind.HOAI, key)):
            return stored
        text = model = host = ""
        if request.analysis:
            answer = await analyse(self.client, request, fee)
            text, model, host = answer.response, answer.model, answer.host
        result = HoaiResult(
            analysis_id=uuid.uuid4().hex, fee=fee, text=text, model=model, host=host,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )  # fmt: skip
        with unreachable_as(_DATABASE):
            result.created_at = await self.store.put(
                result.analysis_id, AnalysisKind.HOAI, request.project_id, key, encode(result),
                text=text, model=model, duration_ms=result.duration_ms,
            )  # fmt: skip
        self.log.info(
            "analysis_stored", kind="hoai", analysis_id=result.analysis_id, model=model,
            duration_ms=result.duration_ms,
        )  # fmt: skip
        return encode(result)

    async def _stored(self, kind: AnalysisKind, key: str) -> bytes | None:
        """The latest result for this input, marked as coming from the store."""
        with unreachable_as(_DATABASE):
            found = await self.store.latest(kind, key)
        if found is None:
            return None
        return self._from_store(found[0], found[1])

    @staticmethod
    def _from_store(output: bytes, created_at: float) -> bytes:
        result = _decode_hoai(output)
        result.stored, result.created_at = True, created_at
        return encode(result)

    async def _get(self, msg: Msg) -> bytes:
        ask = decode_body(AnalysisGet, msg.data, "construction.get")
        with unreachable_as(_DATABASE):
            found = await self.store.get(ask.analysis_id)
        if found is None:
            raise BadRequest(f"no analysis {ask.analysis_id}")
        return self._from_store(*found)

    async def _list(self, msg: Msg) -> bytes:
        ask = decode_body(AnalysisList, msg.data, "construction.list")
        with unreachable_as(_DATABASE):
            analyses = await self.store.recent(ask.kind, ask.project_id, ask.limit)
        return encode(Analyses(analyses=analyses))
