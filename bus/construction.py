"""The SDK's construction calls (`client.construction`): HOAI fees with their analysis,
site safety, stored analyses read back."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError

from bus.errors import BadRequest, Unavailable
from bus.rpc import call
from bus.subjects import Subjects
from schemas import Error, encode
from schemas.construction import (
    Analyses,
    AnalysisGet,
    AnalysisKind,
    AnalysisList,
    AnalysisSummary,
    DocumentRequest,
    DocumentResult,
    HoaiRequest,
    HoaiResult,
    Project,
    ProjectGet,
    ProjectList,
    Projects,
    ProjectStored,
    QuantitiesRequest,
    QuantitiesResult,
    QueryRequest,
    QueryResult,
    ReportRequest,
    ReportResult,
    SafetyRequest,
    SafetyResult,
)

__all__ = ["Construction"]

_decode_hoai = msgspec.json.Decoder(HoaiResult | Error).decode
_decode_safety = msgspec.json.Decoder(SafetyResult | Error).decode
_decode_query = msgspec.json.Decoder(QueryResult | Error).decode
_decode_quantities = msgspec.json.Decoder(QuantitiesResult | Error).decode
_decode_report = msgspec.json.Decoder(ReportResult | Error).decode
_decode_project = msgspec.json.Decoder(ProjectStored | Error).decode
_decode_projects = msgspec.json.Decoder(Projects | Error).decode
_decode_document = msgspec.json.Decoder(DocumentResult | Error).decode
# What a request needs beside a document's base64 content.
_ENVELOPE_BYTES = 64 * 1024
Stored = HoaiResult | SafetyResult | QueryResult | QuantitiesResult | ReportResult | DocumentResult
_decode_stored = msgspec.json.Decoder(Stored | Error).decode
_decode_analyses = msgspec.json.Decoder(Analyses | Error).decode
_SERVICE = "construction analyzer"
# Reading a stored analysis answers within this.
_READ_TIMEOUT_S = 30.0
T = TypeVar("T")


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
        fields["eligible_costs"] = eligible_costs
        return await self._ask("hoai", HoaiRequest, fields, _decode_hoai)

    async def safety(self, **fields: Any) -> SafetyResult:
        """A site's risks, measures, PPE and emergency steps (`conditions`, `workers`,
        `equipment`, `hazards`, `language`, ...)."""
        return await self._ask("safety", SafetyRequest, fields, _decode_safety)

    async def query(self, query: str, **fields: Any) -> QueryResult:
        """A construction question answered by the model its type calls for (`context`
        {phase, regulations, facts}, `language`, ...), with a confidence and, for
        financial and schedule answers, the figures and dates in it."""
        fields["query"] = query
        return await self._ask("query", QueryRequest, fields, _decode_query)

    async def quantities(
        self, specifications: str | list[dict[str, Any]], **fields: Any
    ) -> QuantitiesResult:
        """A material survey from `specifications` (text, or elements with `element`,
        `material`, `length_m`, `width_m`, `height_m`, `count`), with the quantities of
        dimensioned elements computed and checked against the model's."""
        fields["specifications"] = specifications
        return await self._ask("quantities", QuantitiesRequest, fields, _decode_quantities)

    async def report(self, project_id: str, type: str, **fields: Any) -> ReportResult:
        """A Markdown report (`type`: progress, safety, financial, quality) on a stored
        project, its figures computed as of `as_of` (default: today)."""
        fields |= {"project_id": project_id, "type": type}
        return await self._ask("report", ReportRequest, fields, _decode_report)

    async def put_project(self, project: dict[str, Any] | Project) -> ProjectStored:
        """Store a project (new, or its new state): what reports are computed from."""
        fields = project if isinstance(project, dict) else msgspec.to_builtins(project)
        return await self._ask("projects.put", Project, dict(fields), _decode_project)

    async def project(self, project_id: str) -> ProjectStored:
        """A stored project."""
        fields = {"project_id": project_id}
        return await self._ask("projects.get", ProjectGet, fields, _decode_project, _READ_TIMEOUT_S)

    async def projects(self, limit: int = 20) -> list[ProjectStored]:
        """The projects changed last, newest first."""
        fields = {"limit": limit}
        reply = await self._ask(
            "projects.list", ProjectList, fields, _decode_projects, _READ_TIMEOUT_S
        )
        return reply.projects

    async def document(
        self,
        analysis_type: str,
        *,
        data: bytes | None = None,
        text: str | None = None,
        filename: str = "",
        **fields: Any,
    ) -> DocumentResult:
        """A document (its bytes: PDF, DOCX, text, Markdown; or its text) analysed for
        `analysis_type` (compliance, cost, schedule, risk). Bytes that would not fit in
        one message go through the documents object store first, by themselves."""
        fields |= {"analysis_type": analysis_type, "filename": filename}
        if text is not None:
            fields["text"] = text
        elif data is not None:
            if len(data) * 4 // 3 + _ENVELOPE_BYTES < self._nc.max_payload:
                fields["content"] = data
            else:
                fields["object"] = await self._put_document(data)
        timeout = fields.pop("timeout", None)
        return await self._ask("document", DocumentRequest, fields, _decode_document, timeout)

    async def _put_document(self, data: bytes) -> str:
        """Put `data` in the documents object store under its digest; return the name."""
        name = hashlib.sha256(data).hexdigest()
        try:
            store = await self._nc.jetstream().object_store(self._subjects.documents_bucket)
            await store.put(name, data)
        except BucketNotFoundError as exc:
            raise Unavailable("no construction analyzer has made the documents store") from exc
        except nats.errors.Error as exc:
            raise Unavailable(f"could not put the document in the store: {exc!r}") from exc
        return name

    async def _ask(
        self,
        verb: str,
        request_type: type[msgspec.Struct],
        fields: dict[str, Any],
        decode: Callable[[bytes], T | Error],
        timeout: float | None = None,
    ) -> T:
        try:
            request = msgspec.convert(fields, request_type, from_attributes=True)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid {verb} request: {exc}") from exc
        subject = self._subjects.construction(verb)
        return await call(
            self._nc, subject, encode(request), decode, timeout or self._timeout,
            service=_SERVICE,
        )  # fmt: skip

    async def get(self, analysis_id: str) -> Stored:
        """A stored analysis, as its verb answered it."""
        body = encode(AnalysisGet(analysis_id=analysis_id))
        subject = self._subjects.construction("get")
        return await call(
            self._nc, subject, body, _decode_stored, _READ_TIMEOUT_S, service=_SERVICE
        )

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
