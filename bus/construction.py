"""The SDK's construction calls (`client.construction`): HOAI fees with their analysis,
stored analyses read back."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from bus.errors import BadRequest
from bus.rpc import call
from bus.subjects import Subjects
from schemas import Error, encode
from schemas.construction import (
    Analyses,
    AnalysisGet,
    AnalysisKind,
    AnalysisList,
    AnalysisSummary,
    HoaiRequest,
    HoaiResult,
)

__all__ = ["Construction"]

_decode_hoai = msgspec.json.Decoder(HoaiResult | Error).decode
_decode_analyses = msgspec.json.Decoder(Analyses | Error).decode
_SERVICE = "construction analyzer"
# Reading a stored analysis answers within this.
_READ_TIMEOUT_S = 30.0


class Construction:
    """The construction analyzers of the fleet."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def hoai(self, eligible_costs: float, **fields: Any) -> HoaiResult:
        """The HOAI fee for `eligible_costs` (and `zone` or `points`, `phases`, `rate`,
        `kind`, `conversion`, ...), then the model's analysis (`analysis=False`: the fee
        alone)."""
        try:
            request = msgspec.convert(
                {"eligible_costs": eligible_costs, **fields}, HoaiRequest, from_attributes=True
            )
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid hoai request: {exc}") from exc
        subject = self._subjects.construction("hoai")
        return await call(
            self._nc, subject, encode(request), _decode_hoai, self._timeout, service=_SERVICE
        )

    async def get(self, analysis_id: str) -> HoaiResult:
        """A stored analysis, as its verb answered it."""
        body = encode(AnalysisGet(analysis_id=analysis_id))
        subject = self._subjects.construction("get")
        return await call(self._nc, subject, body, _decode_hoai, _READ_TIMEOUT_S, service=_SERVICE)

    async def list(
        self, kind: AnalysisKind | str | None = None, project_id: str | None = None, limit: int = 20
    ) -> list[AnalysisSummary]:
        """The latest analyses, newest first (of one kind or project if given)."""
        try:
            ask = msgspec.convert(
                {"kind": kind, "project_id": project_id, "limit": limit}, AnalysisList
            )
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid list request: {exc}") from exc
        subject = self._subjects.construction("list")
        reply: Analyses = await call(
            self._nc, subject, encode(ask), _decode_analyses, _READ_TIMEOUT_S, service=_SERVICE
        )
        return reply.analyses
