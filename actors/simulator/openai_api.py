"""llama.cpp's `llama-server` API (OpenAI-compatible) over the simulator's engine.

The same engine as the Ollama mode answers: models, slots, pacing, load time, scripts and
faults; only the wire differs. Where the simulator cannot be llama-server exactly:

- Models. With one model any `model` value is accepted and the reply names the model
  served, as llama-server does. With several the request must name one, as llama-server's
  router mode wants: none is a 400 "model name is missing from the request", an unknown
  one a 400 "model not found" (both `invalid_request_error`). `/props` and `/slots` speak
  of the model `?model=` names, else of the first one.
- Loading. With `load_ms` the host loads every model as it starts (the app's lifespan,
  which `SimulatorServer` runs); meanwhile every route but the model lists and `/_sim`
  answers 503 "Loading model".
- Embeddings. Every model embeds, as under llama-server's `--embeddings` (and as in the
  Ollama mode); a model that only embeds refuses completions with 501, in the words of a
  llama-server that cannot complete.
- Faults. `busy` (and a full queue: llama-server itself would wait) is a 503
  `unavailable_error`, `error` a 500 "Compute error." `server_error`, both before any
  byte. After the first token, `error_after` sends llama-server's mid-stream error event,
  `data: {"error": {...}}`, and ends the body without `[DONE]`; before it (and without
  streaming) it is a 500, as llama-server answers an error that comes first.
  `truncate_after` ends the body cleanly without the final chunks or `[DONE]`; a
  non-streamed answer is cut short instead: the text so far, `finish_reason` null, no
  `usage`. `die_after` drops the connection, `stall` goes silent, `slow_first_token`
  holds the first token (and with it the headers, as llama-server sends them) back.
- Sampling. `seed`, `temperature` 0, `max_tokens` (or `max_completion_tokens`,
  `n_predict`), `stop` and `response_format` act as in the Ollama mode; `top_p` and the
  other samplers are accepted and change nothing. A chat with `tools` whose last message
  is the user's calls one tool, whatever the model (`tool_choice` "none" calls none, a
  named one calls that).
  Thinking models stream `reasoning_content`. Only text parts of a message are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.simulator.catalogue import ModelInfo
from actors.simulator.engine import Busy, Engine
from actors.simulator.exchange import Endpoint, Exchange, Handler
from actors.simulator.generation import Answer, HostDied, ModelFailed, Truncated, Turn
from actors.simulator.inference import embed_fault, plan, take_fault
from actors.simulator.openai_wire import (
    BUSY,
    COMPUTE_ERROR,
    DONE,
    SSE,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LlamaRefused,
    Reply,
    Sampling,
    Usage,
    call_tokens,
    context_size,
    error_of,
    event,
    listing,
    model_id,
    pack,
    properties,
    random_id,
)
from actors.simulator.text import count_tokens, embedding
from actors.simulator.wire import BadRequest, ChatRequest, GenerateRequest, Refused, decode

__all__ = ["OpenAIApi", "not_found"]

_PROMETHEUS = [(b"content-type", b"text/plain; version=0.0.4")]
_NO_COMPLETIONS = "This server does not support completions. Start it without `--embeddings`"


async def not_found(request: Request, exc: Exception) -> Response:
    """Answer a path llama-server does not serve, whatever the method (it has no 405)."""
    body = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
    return Response(msgspec.json.encode(body), 404, media_type="application/json; charset=utf-8")


@dataclass(slots=True)
class _Task:
    """What one request holding a slot shows in `/slots`."""

    id: int
    prompt_tokens: int
    limit: int
    answer: Answer | None = None

    def state(self) -> dict[str, object]:
        decoded = self.answer.eval_count if self.answer is not None else 0
        token = {
            "has_next_token": True,
            "has_new_line": False,
            "n_remain": self.limit - decoded if self.limit >= 0 else -1,
            "n_decoded": decoded,
        }
        return {"id_task": self.id, "n_prompt_tokens": self.prompt_tokens, "next_token": [token]}


class _Board:
    """Which of a model's slots (numbered from 0, as llama-server's) each request holds.

    The engine admits at most `size` requests per model, so a free number always exists.
    """

    __slots__ = ("held", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.held: dict[int, _Task] = {}

    @contextlib.contextmanager
    def hold(self, task: _Task) -> Iterator[None]:
        slot = next(i for i in range(self.size) if i not in self.held)
        self.held[slot] = task
        try:
            yield
        finally:
            del self.held[slot]

    def slots(self, n_ctx: int) -> list[dict[str, object]]:
        """`/slots`: each slot, `is_processing` (and what it does) while a request holds it."""
        out: list[dict[str, object]] = []
        for slot in range(self.size):
            task = self.held.get(slot)
            entry = {"id": slot, "n_ctx": n_ctx, "speculative": False}
            out.append(
                {**entry, "is_processing": task is not None, **(task.state() if task else {})}
            )
        return out


class OpenAIApi:
    """llama-server's routes over one engine; see the module docstring for the choices."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._boards: dict[str, _Board] = {}
        self._tasks = itertools.count()
        self._boot: asyncio.Future[Any] | None = None
        self._prompt_tokens = 0
        self._predicted_tokens = 0

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Load every model as the server starts, as llama-server loads its own."""
        if self.engine.load_ms:  # otherwise a model loads the moment it is first used
            self._boot = asyncio.gather(*map(self._load, list(self.engine.models.values())))
        try:
            yield
        finally:
            if self._boot is not None:
                self._boot.cancel()
                await asyncio.wait({self._boot})
                self._boot = None

    async def _load(self, info: ModelInfo) -> None:
        # llama-server keeps its model for as long as it runs.
        async with self.engine.using(info, math.inf, context_size(info)):
            pass

    @property
    def loading(self) -> bool:
        return self._boot is not None and not self._boot.done()

    def routes(self) -> list[Route]:
        """Make llama-server's routes (the `/_sim` ones are the app's to add)."""

        def api(handler: Handler, *, guarded: bool = False, early: bool = False) -> Endpoint:
            return Endpoint(self._llama(handler, early=early), self.engine, guarded=guarded)

        chat, health = api(self.chat, guarded=True), api(self.health)
        models = api(self.models, early=True)
        return [
            Route("/health", health, methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/props", api(self.props), methods=["GET"]),
            Route("/slots", api(self.slots), methods=["GET"]),
            Route("/metrics", api(self.metrics), methods=["GET"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", api(self.completions, guarded=True), methods=["POST"]),
            Route("/v1/embeddings", api(self.embeddings, guarded=True), methods=["POST"]),
        ]

    def _llama(self, handler: Handler, *, early: bool) -> Handler:
        """Run `handler` once the models are loaded (at once if `early`), answering what
        it refuses in llama-server's error shape."""

        async def run(ex: Exchange) -> None:
            try:
                if self.loading and not early:
                    raise Refused(503, "Loading model")
                await handler(ex)
            except Refused as refusal:
                if ex.started:
                    raise
                await ex.json(refusal.status, {"error": error_of(refusal)})

        return run

    # -- the host ---------------------------------------------------------------------------

    def _model(self, name: str | None) -> ModelInfo:
        models = self.engine.models
        if len(models) == 1:
            return next(iter(models.values()))
        if not name:
            raise BadRequest("model name is missing from the request")
        info = self.engine.find(name)
        if info is None:
            raise BadRequest("model not found")
        return info

    def _named(self, ex: Exchange) -> ModelInfo:
        """The model a GET's `?model=` names, else the first one."""
        names = parse_qs(ex.scope.get("query_string", b"").decode()).get("model")
        if names:
            return self._model(names[0])
        first = next(iter(self.engine.models.values()), None)
        if first is None:
            raise BadRequest("model not found")
        return first

    def _board(self, info: ModelInfo) -> _Board:
        board = self._boards.get(info.name)
        if board is None:
            board = self._boards[info.name] = _Board(self.engine.num_parallel)
        return board

    async def health(self, ex: Exchange) -> None:
        await ex.json(200, {"status": "ok"})

    async def models(self, ex: Exchange) -> None:
        await ex.json(200, listing(self.engine.models.values()))

    async def props(self, ex: Exchange) -> None:
        await ex.json(200, properties(self._named(ex), self.engine.num_parallel))

    async def slots(self, ex: Exchange) -> None:
        info = self._named(ex)
        await ex.json(200, self._board(info).slots(context_size(info)))

    async def metrics(self, ex: Exchange) -> None:
        """The Prometheus text of llama-server's `--metrics`, the counters that matter here."""
        stats, lines = self.engine.stats, []
        for name, kind, value, about in (
            ("prompt_tokens_total", "counter", self._prompt_tokens, "prompt tokens processed"),
            ("tokens_predicted_total", "counter", self._predicted_tokens, "tokens predicted"),
            ("requests_processing", "gauge", stats.in_flight, "requests processing"),
            ("requests_deferred", "gauge", stats.queued, "requests deferred"),
        ):  # fmt: skip
            lines += [f"# HELP llamacpp:{name} Number of {about}", f"# TYPE llamacpp:{name} {kind}"]
            lines.append(f"llamacpp:{name} {value}")
        await ex.reply(200, ("\n".join(lines) + "\n").encode(), _PROMETHEUS)

    # -- answers ----------------------------------------------------------------------------

    async def chat(self, ex: Exchange) -> None:
        req = decode(ex.body, ChatCompletionRequest)
        if req.messages is None:
            raise BadRequest("'messages' is required")
        info = self._completer(req)
        asked = ChatRequest(
            model=info.name,
            messages=[m.ollama() for m in req.messages],
            tools=req.chosen_tools(),
            format=req.format(),
            options=req.options(),
        )
        # llama-server's templates (`--jinja`) hand tools to any model, not only to those
        # the catalogue says call tools.
        tooled = (
            info
            if info.calls_tools
            else dataclasses.replace(info, capabilities=(*info.capabilities, "tools"))
        )
        turn = plan(self.engine, asked, tooled, info.name)
        if turn.tool_calls is not None:
            turn.content = call_tokens(turn.tool_calls)
        await self._answer(ex, info, turn, req, Reply(model_id(info), chat=True))

    async def completions(self, ex: Exchange) -> None:
        req = decode(ex.body, CompletionRequest)
        if req.prompt is None:
            raise BadRequest("'prompt' is required")
        info = self._completer(req)
        # A text completion continues the prompt as it is: no template, no thinking.
        asked = GenerateRequest(
            model=info.name, prompt=req.prompt, raw=True, format=req.format(),
            options=req.options(), think=False,
        )  # fmt: skip
        turn = plan(self.engine, asked, info, info.name)
        await self._answer(ex, info, turn, req, Reply(model_id(info), chat=False))

    def _completer(self, req: Sampling) -> ModelInfo:
        if req.n not in (None, 1):
            raise BadRequest("Only one completion choice is allowed")
        info = self._model(req.model)
        if not info.completes:
            raise Refused(501, _NO_COMPLETIONS)
        return info

    async def _answer(
        self, ex: Exchange, info: ModelInfo, turn: Turn, req: Sampling, reply: Reply
    ) -> None:
        n_ctx, prompt = context_size(info), turn.prompt_tokens
        if prompt > n_ctx:
            raise LlamaRefused(
                400,
                f"request ({prompt} tokens) exceeds the available context size ({n_ctx} "
                "tokens), try increasing it",
                "exceed_context_size_error",
                n_prompt_tokens=prompt,
                n_ctx=n_ctx,
            )
        fault = take_fault(self.engine, info, BUSY, COMPUTE_ERROR)
        limit = req.options().num_predict
        task = _Task(next(self._tasks), prompt, -1 if limit is None else limit)
        engine = self.engine
        try:
            async with engine.serving(info, math.inf, n_ctx, generation=True):
                task.answer = Answer(turn, fault, engine.token_interval, COMPUTE_ERROR)
                with self._board(info).hold(task):
                    await self._deliver(ex, turn, task.answer, req, reply)
        except Busy:
            raise Refused(503, BUSY) from None

    async def _deliver(
        self, ex: Exchange, turn: Turn, answer: Answer, req: Sampling, reply: Reply
    ) -> None:
        """Send the answer whole or as SSE chunks, starting the stream with the first token."""
        ready = time.perf_counter_ns()
        stream, calling = bool(req.stream), turn.tool_calls is not None
        call_id = random_id()
        content: list[str] = []
        thoughts: list[str] = []

        async def send(*chunks: dict[str, object], tail: bytes = b"") -> None:
            opening = [reply.role()] if reply.chat and not ex.started else []
            await ex.write(b"".join(event(c) for c in (*opening, *chunks)) + tail, SSE)

        try:
            async for thinking, text in answer.pieces():
                (thoughts if thinking else content).append(text)
                if not stream:
                    continue
                if calling and not thinking:
                    first = len(content) == 1
                    await send(reply.call(call_id, text) if first else reply.arguments(text))
                else:
                    await send(reply.piece(text, thinking=thinking))
        except ModelFailed as failure:
            if not ex.started:
                raise Refused(500, str(failure)) from None
            # llama-server's error after the first token: one event, then no [DONE].
            await ex.write(event({"error": error_of(Refused(500, str(failure)))}), SSE)
            await ex.end()
            return
        except HostDied:
            await ex.die()
        except Truncated:
            if stream:
                await ex.write(b"", SSE)  # an SSE body, if an empty one
                await ex.end()
            else:
                await ex.json(200, reply.whole(None, "".join(content), None))
            return
        finally:
            self._prompt_tokens += turn.prompt_tokens
            self._predicted_tokens += answer.eval_count
        end = time.perf_counter_ns()
        first_ns = answer.first_ns or end
        usage = Usage(turn.prompt_tokens, answer.eval_count, first_ns - ready, end - first_ns)
        finish = "tool_calls" if calling and answer.done_reason == "stop" else answer.done_reason
        if stream:
            await send(*reply.ending(finish, usage, req.include_usage), tail=DONE)
            await ex.end()
            return
        calls = None
        if calling and content:
            function = {"name": content[0], "arguments": "".join(content[1:])}
            calls = [{"type": "function", "function": function, "id": call_id}]
        text = "" if calling else "".join(content)
        whole = reply.whole(finish, text, usage, reasoning="".join(thoughts), calls=calls)
        await ex.json(200, whole)

    async def embeddings(self, ex: Exchange) -> None:
        req = decode(ex.body, EmbeddingRequest)
        if req.input is None:
            raise BadRequest('"input" or "content" must be provided')
        if req.encoding_format not in (None, "float", "base64"):
            raise BadRequest(
                "The format to return the embeddings in. Can be either float or base64"
            )
        info = self._model(req.model)
        texts = [req.input] if isinstance(req.input, str) else req.input
        tokens = sum(count_tokens(t) for t in texts)
        fault = take_fault(self.engine, info, BUSY, COMPUTE_ERROR)
        engine = self.engine
        try:
            async with engine.serving(info, math.inf, context_size(info), generation=False):
                with self._board(info).hold(_Task(next(self._tasks), tokens, 0)):
                    await embed_fault(ex, fault, COMPUTE_ERROR)
                    vectors = [embedding(info.name, t, info.embedding_length) for t in texts]
        except Busy:
            raise Refused(503, BUSY) from None
        self._prompt_tokens += tokens
        packed = req.encoding_format == "base64"
        data = [
            {"embedding": pack(v), "index": i, "object": "embedding", "encoding_format": "base64"}
            if packed
            else {"embedding": v, "index": i, "object": "embedding"}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = {
            "model": req.model or model_id(info),
            "object": "list",
            "usage": usage,
            "data": data,
        }
        await ex.json(200, body)
