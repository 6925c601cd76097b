"""The construction analyzer: HOAI fees with their analysis, site safety, questions,
material surveys, project reports, documents, stored and read back.

`<prefix>.v1.construction.{hoai,safety,query,quantities,report,document,get,list}` and
`.projects.{put,get,list}` (request/reply, one queue group for every replica). Whatever
can be computed without a model is computed here, exactly, and given to the model as
fact; the model is reached through the public subjects like any client's. Every result
is stored under an id; the same input again is answered from the store unless the
request says `fresh`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, ObjectNotFoundError

from actors.construction import documents, hoai, quantities, query, report, safety
from actors.construction.fees import hoai_fee
from actors.construction.store import AnalysisStore, ProjectStore
from actors.store.sink import unreachable_as
from bus.actor import Actor
from bus.client import Client
from bus.config import Config
from bus.connection import Connection
from bus.errors import BadRequest, Unavailable
from bus.rpc import decode_body
from bus.subjects import Subjects
from schemas import GenerateResult, encode
from schemas.construction import (
    Analyses,
    Analysis,
    AnalysisGet,
    AnalysisKind,
    AnalysisList,
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

__all__ = ["ConstructionAnalyzer", "input_hash"]

_QUEUE = "construction"
_DATABASE = "the construction database"
_DOCUMENTS_TTL_S = 24 * 3600.0
_MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_decode_result = msgspec.json.Decoder(
    HoaiResult | SafetyResult | QueryResult | QuantitiesResult | ReportResult | DocumentResult
).decode
_decode_project = msgspec.json.Decoder(Project).decode
A = TypeVar("A", bound=Analysis)


class _Request(Protocol):
    """What every verb's request has: whether to analyse again, and its project."""

    fresh: bool
    project_id: str | None


@dataclass
class _Keyed:
    """An input that includes more than its request: a stored project's state, or a
    document's digest."""

    request: ReportRequest | QueryRequest | DocumentRequest
    state: Project | str | None

    @property
    def fresh(self) -> bool:
        return self.request.fresh

    @property
    def project_id(self) -> str | None:
        return self.request.project_id


def input_hash(request: Any) -> str:
    """What identifies an input: the request, `fresh` aside, in a fixed key order (and,
    for a report, the project's state too)."""
    if isinstance(request, _Keyed):
        parts: Any = (msgspec.structs.replace(request.request, fresh=False), request.state)
    else:
        parts = msgspec.structs.replace(request, fresh=False)
    return hashlib.sha256(msgspec.json.encode(parts, order="deterministic")).hexdigest()


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
        self.projects = ProjectStore(pool)
        # A client of the fleet like any other, on this process's connection.
        self.client = Client(nc=nc, prefix=subjects.prefix, timeout=config.executor.total_timeout_s)
        self.roles = frozenset(config.roles)
        self._replicas = config.nats.replicas
        self.js = nc.jetstream()

    async def setup(self) -> None:
        await self._ensure_documents_bucket()
        verbs = {
            "hoai": self._hoai, "safety": self._safety, "query": self._query,
            "quantities": self._quantities, "report": self._report,
            "document": self._document,
            "projects.put": self._project_put, "projects.get": self._project_get,
            "projects.list": self._project_list,
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
        project = await self._project(request.project_id) if request.project_id else None

        async def make() -> QueryResult:
            kind, classified = await query.classify(self.client, request)
            if not classified:
                self.log.warning("query_not_classified", fallback=kind.value)
            answer = await query.answer(self.client, request, kind, self.roles, project)
            score, markers = query.confidence(answer.response)
            found, when = query.figures(kind, answer.response)
            result = QueryResult(
                query_type=kind, classified=classified, confidence=score, markers=markers,
                quantities=found, dates=when,
            )  # fmt: skip
            return _wrote(result, answer)

        return await self._answer(AnalysisKind.QUERY, _Keyed(request, project), make)

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

    async def _ensure_documents_bucket(self) -> None:
        """The object store large documents travel through (kept a day)."""
        config = ObjectStoreConfig(
            description="Documents for construction.document, too large for one message",
            ttl=_DOCUMENTS_TTL_S,
            storage=StorageType.FILE,
            replicas=self._replicas,
        )
        try:
            await self.js.create_object_store(self.subjects.documents_bucket, config=config)
        except BadRequestError as exc:  # there already, made otherwise: used as it is
            self.log.info("documents_bucket_exists", note=exc.description)

    async def reconnected(self) -> None:
        await self._ensure_documents_bucket()

    async def _document(self, msg: Msg) -> bytes:
        request = decode_body(DocumentRequest, msg.data, "construction.document")
        data = await self._document_bytes(request)
        # Reading a long PDF takes a while: not on the loop every request shares.
        read = await asyncio.to_thread(documents.extract, data, request.filename, request.format)
        parts = documents.split(read.text)
        digest = hashlib.sha256(data).hexdigest()

        async def make() -> DocumentResult:
            answer, analyses = await documents.analyse(self.client, request, parts)
            result = DocumentResult(
                analysis_type=request.analysis_type, format=read.format, pages=read.pages,
                characters=len(read.text), parts=len(parts),
                part_analyses=analyses if len(parts) > 1 else [],
            )  # fmt: skip
            return _wrote(result, answer)

        # The document is in the key by its digest, however it came.
        bare = msgspec.structs.replace(request, text=None, content=None, object=None)
        return await self._answer(AnalysisKind.DOCUMENT, _Keyed(bare, digest), make)

    async def _document_bytes(self, request: DocumentRequest) -> bytes:
        given = [x is not None for x in (request.text, request.content, request.object)]
        if sum(given) != 1:
            raise BadRequest("give the document once: as text, content or object")
        if request.text is not None:
            return request.text.encode()
        if request.content is not None:
            return request.content
        assert request.object is not None
        try:
            store = await self.js.object_store(self.subjects.documents_bucket)
            found = await store.get(request.object)
        except ObjectNotFoundError:
            raise BadRequest(f"no document {request.object} in the documents store") from None
        except nats.errors.Error as exc:
            raise Unavailable(f"the documents store is unreachable: {exc!r}") from exc
        data = found.data or b""
        if len(data) > _MAX_DOCUMENT_BYTES:
            raise BadRequest(f"the document is {len(data)} bytes, over {_MAX_DOCUMENT_BYTES}")
        return data

    async def _report(self, msg: Msg) -> bytes:
        request = decode_body(ReportRequest, msg.data, "construction.report")
        project = await self._project(request.project_id)
        # The figures depend on the day and the project's state: both are in the input.
        if request.as_of is None:
            request.as_of = dt.date.today().isoformat()
        as_of = request.as_of
        found = report.figures(
            project, request.type, dt.date.fromisoformat(as_of), request.language
        )

        async def make() -> ReportResult:
            answer = await report.analyse(self.client, request, project, as_of, found)
            result = ReportResult(
                project_id=project.project_id, report_type=request.type, as_of=as_of,
                figures=found,
                markdown=report.markdown(project, request, as_of, found, answer.response),
            )  # fmt: skip
            return _wrote(result, answer)

        keyed = _Keyed(request, project)
        return await self._answer(AnalysisKind.REPORT, keyed, make)

    async def _project(self, project_id: str) -> Project:
        with unreachable_as(_DATABASE):
            found = await self.projects.get(project_id)
        if found is None:
            raise BadRequest(f"no project {project_id}")
        return _decode_project(found[0])

    async def _project_put(self, msg: Msg) -> bytes:
        project = decode_body(Project, msg.data, "construction.projects.put")
        report.check_dates(project)
        with unreachable_as(_DATABASE):
            created, updated = await self.projects.put(
                project.project_id, project.name, encode(project)
            )
        self.log.info("project_stored", project_id=project.project_id)
        return encode(ProjectStored(project=project, created_at=created, updated_at=updated))

    async def _project_get(self, msg: Msg) -> bytes:
        ask = decode_body(ProjectGet, msg.data, "construction.projects.get")
        with unreachable_as(_DATABASE):
            found = await self.projects.get(ask.project_id)
        if found is None:
            raise BadRequest(f"no project {ask.project_id}")
        doc, created, updated = found
        return encode(ProjectStored(project=_decode_project(doc), created_at=created,
                                    updated_at=updated))  # fmt: skip

    async def _project_list(self, msg: Msg) -> bytes:
        ask = decode_body(ProjectList, msg.data, "construction.projects.list")
        with unreachable_as(_DATABASE):
            rows = await self.projects.recent(ask.limit)
        stored = [ProjectStored(project=_decode_project(d), created_at=c, updated_at=u)
                  for d, c, u in rows]  # fmt: skip
        return encode(Projects(projects=stored))

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
