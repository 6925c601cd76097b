"""The Python client SDK: send requests, read token streams, cancel, resume."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import msgspec
from nats.aio.client import Client as NATS

from bus.connection import close_within, connect
from bus.construction import Construction
from bus.credentials import Credentials
from bus.errors import (
    BadRequest,
    Internal,
    PayloadTooLarge,
)
from bus.fleet import Fleet
from bus.keys import ApiKeys
from bus.reasoning import Reasoning
from bus.rpc import call
from bus.stream import ChainStream, ChunkStream, Inbox, Stream, listen, replay
from bus.subjects import Subjects
from schemas import (
    Accepted,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Error,
    FleetStats,
    GenerateRequest,
    GenerateResult,
    Kind,
    Message,
    Options,
    QueueStats,
    ReasonResult,
    Request,
    Result,
    decode_reply,
    encode,
)
from schemas.cache import Invalidate, Invalidated
from schemas.reasoning import Chain, ChainSummary
from schemas.templates import (
    Prompt,
    PromptDeleted,
    PromptList,
    PromptPut,
    PromptRef,
    PromptRender,
    Prompts,
    Rendered,
)

__all__ = ["ChainStream", "ChunkStream", "Client"]

T = TypeVar("T")
S = TypeVar("S", bound=Stream)
_decode_queue_stats = msgspec.json.Decoder(QueueStats | Error).decode


_decode_stats = msgspec.json.Decoder(FleetStats | Error).decode


_decode_invalidated = msgspec.json.Decoder(Invalidated | Error).decode
_decode_prompt = msgspec.json.Decoder(Prompt | Error).decode
_decode_prompts = msgspec.json.Decoder(Prompts | Error).decode
_decode_deleted = msgspec.json.Decoder(PromptDeleted | Error).decode
_decode_rendered = msgspec.json.Decoder(Rendered | Error).decode
# A drain is one round trip to the server; past this the server is not answering.
_CLOSE_TIMEOUT_S = 2.0

OptionsLike = Options | Mapping[str, Any] | None
MessageLike = Message | Mapping[str, Any]


def _convert(value: Any, cls: type[Any], what: str) -> Any:
    try:
        return msgspec.convert(value, cls, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid {what}: {exc}") from exc


class Client:
    """`async with Client(url) as c:` then `generate`, `chat`, `embed`, `cancel`, `resume`.

    `credentials` say who the client is to NATS (`bus.credentials`); without them, the
    environment's `NATS_CREDS`, `NATS_NKEY`, `NATS_USER` and `NATS_PASSWORD` or `NATS_TOKEN`.

    `stream=True` returns a `ChunkStream`; `stream=False` returns the whole result, shaped
    like Ollama's (`response`, `message`, `embeddings`). Failures raise `OllameshError`
    subclasses named after the wire error codes.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "llm",
        nc: NATS | None = None,
        timeout: float = 300.0,
        name: str = "ollamesh-client",
        credentials: Credentials | None = None,
    ) -> None:
        self.url = url
        # None: the environment's (NATS_CREDS, NATS_NKEY, NATS_USER and NATS_PASSWORD...).
        self._credentials = credentials
        self.subjects = Subjects(prefix)
        self.timeout = timeout
        self._name = name
        self._nc = nc
        self._owns_nc = nc is None
        # Streams nobody read to the end: their subscriptions would keep drain waiting.
        self._open: set[Stream] = set()

    async def reason(self, query: str, **kw: Any) -> ChainStream | ReasonResult:
        """Answer `query` through a chain of steps (see `bus.reasoning.Reasoning.reason`):
        with `stream=True` (the default) a `ChainStream` of its steps and answer chunks."""
        return await self._reasoning.reason(query, **kw)

    async def get_chain(self, chain_id: str) -> Chain:
        """A stored reasoning chain, with its steps and its answer or error."""
        return await self._reasoning.chain(chain_id)

    async def list_chains(self, limit: int = 20) -> list[ChainSummary]:
        """The latest reasoning chains, newest first."""
        return await self._reasoning.chains(limit)

    @property
    def _reasoning(self) -> Reasoning:
        def open_stream(inbox: Inbox, chain_id: str) -> ChainStream:
            return self._open_stream(ChainStream, inbox, chain_id)

        return Reasoning(self.nc, self.subjects, self.timeout, open_stream)

    @property
    def construction(self) -> Construction:
        """HOAI fees with their analysis, and stored analyses."""
        return Construction(self.nc, self.subjects, self.timeout)

    @property
    def keys(self) -> ApiKeys:
        """The HTTP gateway's API keys: create, list, revoke."""
        return ApiKeys(self.nc, self.subjects, self.timeout)

    @property
    def fleet(self) -> Fleet:
        """Hosts and models: the health view, list, show, ps, pull, load, unload, delete."""
        return Fleet(self.nc, self.subjects)

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("Client is not connected: use `async with Client(url)`")
        return self._nc

    async def connect(self) -> Client:
        if self._nc is None:
            self._nc = await connect(self.url, name=self._name, credentials=self._credentials)
        return self

    async def close(self) -> None:
        """Close every open stream, then drain the connection (if this client made it),
        waiting at most `_CLOSE_TIMEOUT_S` for a server that does not answer."""
        for stream in list(self._open):
            await stream.aclose()
        if self._nc is not None and self._owns_nc:
            nc, self._nc = self._nc, None
            await close_within(nc, _CLOSE_TIMEOUT_S)

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the three request kinds ------------------------------------------------------

    @overload
    async def generate(
        self, model: str | None = ..., prompt: str = ..., *, stream: Literal[False] = ..., **kw: Any
    ) -> GenerateResult: ...
    @overload
    async def generate(
        self, model: str | None = ..., prompt: str = ..., *, stream: Literal[True], **kw: Any
    ) -> ChunkStream: ...
    async def generate(
        self,
        model: str | None = None,
        prompt: str = "",
        *,
        stream: bool = False,
        options: OptionsLike = None,
        **fields: Any,
    ) -> GenerateResult | ChunkStream:
        """Complete `prompt` (fields as Ollama's `/api/generate`, plus `role`, `deadline_ms`)."""
        request = GenerateRequest(
            model=model,
            prompt=prompt,
            stream=stream,
            options=self._options(options),
            **fields,
        )
        return await self.send(request)  # type: ignore[return-value]

    @overload
    async def chat(
        self,
        model: str | None = ...,
        messages: Iterable[MessageLike] = ...,
        *,
        stream: Literal[False] = ...,
        **kw: Any,
    ) -> ChatResult: ...
    @overload
    async def chat(
        self,
        model: str | None = ...,
        messages: Iterable[MessageLike] = ...,
        *,
        stream: Literal[True],
        **kw: Any,
    ) -> ChunkStream: ...
    async def chat(
        self,
        model: str | None = None,
        messages: Iterable[MessageLike] = (),
        *,
        stream: bool = False,
        options: OptionsLike = None,
        **fields: Any,
    ) -> ChatResult | ChunkStream:
        """Continue a conversation (fields as Ollama's `/api/chat`)."""
        request = ChatRequest(
            model=model,
            messages=_convert(list(messages), list[Message], "messages"),
            stream=stream,
            options=self._options(options),
            **fields,
        )
        return await self.send(request)  # type: ignore[return-value]

    async def embed(
        self, model: str | None = None, input: str | list[str] = "", **fields: Any
    ) -> EmbedResult:
        """Embed one text or a batch (fields as Ollama's `/api/embed`)."""
        options = self._options(fields.pop("options", None))
        request = EmbedRequest(model=model, input=input, options=options, **fields)
        return await self.send(request)  # type: ignore[return-value]

    @staticmethod
    def _options(options: OptionsLike) -> Options | None:
        if options is None or isinstance(options, Options):
            return options
        return _convert(options, Options, "options")  # type: ignore[no-any-return]

    async def send(self, request: Request) -> Result | ChunkStream:
        """Send a prepared request; return its result, or its stream if `stream` is set."""
        kind = Kind(str(request.__struct_config__.tag))
        if request.stream:
            if request.request_id is None:
                request = msgspec.structs.replace(request, request_id=uuid.uuid4().hex)
            return await self._send_streamed(kind, request)
        reply = await self._request(kind, request)
        if isinstance(reply, Accepted):
            raise Internal("the router accepted a non-streamed request as a stream")
        return reply

    async def _send_streamed(self, kind: Kind, request: Request) -> ChunkStream:
        request_id = request.request_id
        assert request_id is not None
        # Subscribe before sending: the SUB reaches the server ahead of the request on
        # this connection, so not even the first chunk can be missed.
        inbox = await listen(self.nc, self.subjects.stream(request_id))
        try:
            reply = await self._request(kind, request)
        except BaseException:
            await inbox.close()
            raise
        if not isinstance(reply, Accepted):
            await inbox.close()
            raise Internal(f"expected `accepted`, got {type(reply).__name__}")
        return self._open_stream(ChunkStream, inbox, request_id, model=reply.model)

    async def _request(self, kind: Kind, request: Request) -> Accepted | Result:
        data = encode(request)
        if len(data) > self.nc.max_payload:
            raise PayloadTooLarge(
                f"request is {len(data)} bytes; the server takes at most {self.nc.max_payload}",
                request_id=request.request_id,
            )
        timeout = self.timeout
        if request.deadline_ms is not None:
            timeout = min(timeout, request.deadline_ms / 1000 + 5.0)
        subject = self.subjects.request(kind)
        return await self._call(subject, data, decode_reply, timeout, request.request_id)

    async def _call(
        self,
        subject: str,
        data: bytes,
        decode: Callable[[bytes], T | Error],
        timeout: float,
        request_id: str | None = None,
        service: str = "router",
    ) -> T:
        return await call(
            self.nc, subject, data, decode, timeout, service=service, request_id=request_id
        )

    async def stats(self) -> FleetStats:
        """Request figures per model and per host over the last minute, hour and day."""
        return await self._call(
            self.subjects.stats, b"", _decode_stats, min(self.timeout, 30.0), service="recorder"
        )

    async def invalidate_cache(self, model: str | None = None) -> int:
        """Drop cached answers of `model` (None: all) from every tier; return the rows."""
        body = encode(Invalidate(model=model))
        reply: Invalidated = await self._call(
            self.subjects.cache_invalidate,
            body,
            _decode_invalidated,
            min(self.timeout, 30.0),
            service="cache keeper",
        )
        return reply.removed

    # -- prompt templates -------------------------------------------------------------

    async def put_prompt(
        self,
        name: str,
        template: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> Prompt:
        """Store a new version of template `name`; return it (with its version)."""
        body = PromptPut(
            name=name, template=template, parameters=dict(parameters or {}), description=description
        )
        return await self._prompts("put", body, _decode_prompt)

    async def get_prompt(self, name: str, version: int | None = None) -> Prompt:
        """The latest (or the given) version of template `name`, with its usage."""
        return await self._prompts("get", PromptRef(name=name, version=version), _decode_prompt)

    async def list_prompts(self) -> list[Prompt]:
        """Every template's latest version."""
        reply: Prompts = await self._prompts("list", PromptList(), _decode_prompts)
        return reply.prompts

    async def delete_prompt(self, name: str, version: int | None = None) -> int:
        """Delete one version of `name`, or (no version) all of them; return how many."""
        reply: PromptDeleted = await self._prompts(
            "delete", PromptRef(name=name, version=version), _decode_deleted
        )
        return reply.versions

    async def render_prompt(
        self, name: str, variables: Mapping[str, Any], version: int | None = None
    ) -> Rendered:
        """Template `name` with its `{{variables}}` filled (unused ones listed)."""
        body = PromptRender(name=name, version=version, variables=dict(variables))
        return await self._prompts("render", body, _decode_rendered)

    async def _prompts(
        self, verb: str, body: msgspec.Struct, decode: Callable[[bytes], T | Error]
    ) -> T:
        subject = self.subjects.prompts(verb)
        timeout = min(self.timeout, 30.0)
        return await self._call(subject, encode(body), decode, timeout, service="prompt store")

    async def queues(self) -> QueueStats:
        """Waiting and running work per model, as the server counts it now."""
        return await self._call(
            self.subjects.queue_stats, b"", _decode_queue_stats, min(self.timeout, 10.0)
        )

    # -- control ----------------------------------------------------------------------

    async def cancel(self, request_id: str) -> None:
        """Stop a request wherever it is, queued or generating."""
        await self.nc.publish(self.subjects.cancel(request_id), b"")
        await self.nc.flush()

    def _open_stream(self, cls: type[S], inbox: Inbox, request_id: str, **kw: Any) -> S:
        """A stream of `cls` on `inbox`, closed with the client if nobody reads it to its end."""
        stream = cls(
            self.nc, self.subjects, inbox, request_id, timeout=self.timeout,
            on_close=self._open.discard, **kw,
        )  # fmt: skip
        self._open.add(stream)
        return stream

    async def resume(self, request_id: str, from_seq: int = 1) -> ChunkStream:
        """Replay a request's stream from `from_seq`, then follow it live to its end."""
        inbox = await replay(self.nc, self.subjects, request_id)
        return self._open_stream(ChunkStream, inbox, request_id, from_seq=from_seq, replaying=True)
