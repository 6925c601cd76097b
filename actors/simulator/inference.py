"""generate, chat, embed and embeddings: the endpoints that occupy a model's slot."""

from __future__ import annotations

import asyncio
import time

import msgspec

from actors.simulator.catalogue import ModelInfo
from actors.simulator.engine import Busy, Engine, Fault, parse_keep_alive
from actors.simulator.exchange import Exchange
from actors.simulator.generation import (
    CRASH_ERROR,
    MIDSTREAM_ERROR,
    Answer,
    HostDied,
    ModelFailed,
    Truncated,
    Turn,
    plan_chat,
    plan_generate,
    token_ids,
)
from actors.simulator.scripts import pieces
from actors.simulator.text import count_tokens, embedding
from actors.simulator.wire import (
    BadRequest,
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Options,
    Refused,
    bad_image,
    decode,
    timestamp,
)

__all__ = ["BUSY_ERROR", "InferenceApi", "embed_fault", "plan", "take_fault"]

BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"

_encode = msgspec.json.encode


class _Lines:
    """The NDJSON lines of one streamed answer, assembled from bytes made once per request."""

    __slots__ = ("content", "head", "thinking")

    def __init__(self, turn: Turn) -> None:
        self.head = b'{"model":' + _encode(turn.model) + b',"created_at":"'
        if turn.chat:
            self.content = (b'","message":{"role":"assistant","content":', b'},"done":false}\n')
            self.thinking = (
                b'","message":{"role":"assistant","content":"","thinking":',
                b'},"done":false}\n',
            )
        else:
            self.content = (b'","response":', b',"done":false}\n')
            self.thinking = (b'","response":"","thinking":', b',"done":false}\n')

    def tool_calls(self, calls: object) -> bytes:
        """The line that carries a chat's tool calls, as Ollama streams them."""
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        return b"".join((self.head, timestamp().encode(), b'","message":', _encode(message),
                         b',"done":false}\n'))  # fmt: skip

    def line(self, thinking: bool, text: str) -> bytes:
        middle, tail = self.thinking if thinking else self.content
        return b"".join((self.head, timestamp().encode(), middle, _encode(text), tail))


def plan(engine: Engine, req: GenerateRequest | ChatRequest, info: ModelInfo, label: str) -> Turn:
    """Plan the answer to a chat or a generate request, unless a script answers it instead.

    What the model was asked (a chat's last message; a prompt, after its system prompt
    if it has one, as the model's template puts them together) joins `/_sim/prompts`.
    """
    if isinstance(req, ChatRequest):
        turn = plan_chat(req, info, label)
        asked = (req.messages[-1].content or "") if req.messages else ""
    else:
        turn = plan_generate(req, info, label)
        asked = "\n\n".join(part for part in (req.system, req.prompt) if part)
    engine.stats.prompts.append(asked)
    if (scripted := engine.scripts.take(info.name, asked)) is not None:
        turn.content, turn.limited = pieces(scripted), False
    return turn


def take_fault(
    engine: Engine, info: ModelInfo, busy: str = BUSY_ERROR, error: str = CRASH_ERROR
) -> Fault | None:
    """Take the fault this request meets; `busy` and `error` refuse it here and now (503 and
    500, saying `busy` or `error` unless the fault has a message of its own)."""
    fault = engine.take_fault(info)
    if fault is not None and fault.kind == "busy":
        raise Refused(503, fault.message or busy)
    if fault is not None and fault.kind == "error":
        raise Refused(500, fault.message or error)
    return fault


class InferenceApi:
    """The inference half of the API: every request here takes one of a model's slots."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _model(self, name: str | None) -> tuple[ModelInfo, str]:
        if not name:
            raise BadRequest("model is required")
        info = self.engine.find(name)
        if info is None:
            raise Refused(404, f'model "{name}" not found, try pulling it first')
        return info, name

    def _keep_alive(self, value: float | str | None) -> float:
        try:
            return parse_keep_alive(value, self.engine.keep_alive)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc

    async def generate(self, ex: Exchange) -> None:
        await self._complete(ex, decode(ex.body, GenerateRequest))

    async def chat(self, ex: Exchange) -> None:
        await self._complete(ex, decode(ex.body, ChatRequest))

    async def _complete(self, ex: Exchange, req: GenerateRequest | ChatRequest) -> None:
        """Serve generate or chat: an empty prompt or conversation only loads the model."""
        chat = isinstance(req, ChatRequest)
        info, label = self._model(req.model)
        if not info.completes:
            raise BadRequest(f'"{label}" does not support {"chat" if chat else "generate"}')
        keep_alive = self._keep_alive(req.keep_alive)
        num_ctx = (req.options or Options()).num_ctx
        if isinstance(req, ChatRequest):
            empty = not req.messages
            images = [i for m in req.messages or () for i in m.images or ()]
        else:
            empty, images = not req.prompt, req.images or []
        if empty:
            await self._load_only(ex, info, label, keep_alive, num_ctx, chat=chat)
            return
        self._images(info, images)
        turn = plan(self.engine, req, info, label)
        await self._answer(ex, info, turn, keep_alive, num_ctx, req.stream is not False)

    @staticmethod
    def _images(info: ModelInfo, images: list[str]) -> None:
        if not images:
            return
        if (problem := bad_image(images)) is not None:
            raise BadRequest(problem)
        if not info.sees:
            raise Refused(500, "this model is missing data required for image input")

    async def _load_only(
        self,
        ex: Exchange,
        info: ModelInfo,
        label: str,
        keep_alive: float,
        num_ctx: int | None,
        *,
        chat: bool,
    ) -> None:
        """An empty prompt or conversation loads the model, or unloads it with keep_alive 0."""
        if keep_alive == 0:
            self.engine.unload(info)
            reason = "unload"
        else:
            async with self.engine.using(info, keep_alive, num_ctx):
                reason = "load"
        out: dict[str, object] = {"model": label, "created_at": timestamp()}
        if chat:
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        out["done"] = True
        out["done_reason"] = reason
        await ex.json(200, out)

    async def _answer(
        self,
        ex: Exchange,
        info: ModelInfo,
        turn: Turn,
        keep_alive: float,
        num_ctx: int | None,
        stream: bool,
    ) -> None:
        started = time.perf_counter_ns()
        fault = take_fault(self.engine, info)
        engine = self.engine
        try:
            async with engine.serving(info, keep_alive, num_ctx, generation=True):
                answer = Answer(turn, fault, engine.token_interval)
                await self._deliver(ex, turn, answer, started, stream)
        except Busy:
            raise Refused(503, BUSY_ERROR) from None

    async def _deliver(
        self, ex: Exchange, turn: Turn, answer: Answer, started: int, stream: bool
    ) -> None:
        ready = time.perf_counter_ns()
        lines = _Lines(turn) if stream else None
        content: list[str] = []
        thoughts: list[str] = []
        try:
            calling = turn.tool_calls is not None
            async for thinking, text in answer.pieces():
                (thoughts if thinking else content).append(text)
                if lines is not None and (thinking or not calling):
                    await ex.write(lines.line(thinking, text))
            if calling and lines is not None:
                await ex.write(lines.tool_calls(turn.tool_calls))
        except ModelFailed as failure:
            if not ex.started:
                raise Refused(500, str(failure)) from None
            await ex.write(_encode({"error": str(failure)}) + b"\n")
            await ex.end()
            return
        except HostDied:
            await ex.die()
        except Truncated:
            if lines is None:
                await ex.json(200, {"model": turn.model, "created_at": timestamp(), "done": False})
            else:
                await ex.end()
            return
        whole = "" if turn.tool_calls is not None else "".join(content)
        final = _final(turn, answer, started, ready, "" if stream else whole, thoughts, stream)
        if turn.context is not None:
            final["context"] = turn.context + token_ids(whole)
        if lines is None:
            await ex.json(200, final)
        else:
            await ex.write(_encode(final) + b"\n")
            await ex.end()

    async def embed(self, ex: Exchange) -> None:
        req = decode(ex.body, EmbedRequest)
        info, label = self._model(req.model)
        raw = req.input
        texts = ([raw] if raw else []) if isinstance(raw, str) else list(raw or [])
        vectors, stats = await self._embed(
            ex, info, req.keep_alive, req.options, texts, req.dimensions
        )
        await ex.json(200, {"model": label, "embeddings": vectors, **stats})

    async def embeddings(self, ex: Exchange) -> None:
        req = decode(ex.body, EmbeddingsRequest)
        info, _ = self._model(req.model)
        texts = [req.prompt] if req.prompt else []
        vectors, _ = await self._embed(ex, info, req.keep_alive, req.options, texts, None)
        await ex.json(200, {"embedding": vectors[0] if vectors else []})

    async def _embed(
        self,
        ex: Exchange,
        info: ModelInfo,
        keep_alive_value: float | str | None,
        options: Options | None,
        texts: list[str],
        dimensions: int | None,
    ) -> tuple[list[list[float]], dict[str, int]]:
        keep_alive = self._keep_alive(keep_alive_value)
        started = time.perf_counter_ns()
        fault = take_fault(self.engine, info)
        try:
            num_ctx = (options or Options()).num_ctx
            async with self.engine.serving(info, keep_alive, num_ctx, generation=False):
                ready = time.perf_counter_ns()
                await embed_fault(ex, fault)
                size = info.embedding_length
                if dimensions is not None and 0 < dimensions < size:
                    size = dimensions
                vectors = [embedding(info.name, t, size) for t in texts]
        except Busy:
            raise Refused(503, BUSY_ERROR) from None
        stats = {
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": ready - started,
            "prompt_eval_count": sum(count_tokens(t) for t in texts),
        }
        return vectors, stats


async def embed_fault(ex: Exchange, fault: Fault | None, error: str = MIDSTREAM_ERROR) -> None:
    """Strike an embedding with its fault: there are no tokens, so before the reply.

    `error_after` and `truncate_after` refuse it with a 500 saying `error` (or the
    fault's own message).
    """
    if fault is None:
        return
    if fault.kind == "slow_first_token":
        await asyncio.sleep(fault.delay_ms / 1000)
    elif fault.kind == "die_after":
        await ex.die()
    elif fault.kind in ("error_after", "truncate_after"):
        raise Refused(500, fault.message or error)
    elif fault.kind == "stall":
        await asyncio.Future()


def _final(
    turn: Turn,
    answer: Answer,
    started: int,
    ready: int,
    text: str,
    thoughts: list[str],
    stream: bool,
) -> dict[str, object]:
    """The last line of a stream, or the whole non-streamed answer, with Ollama's stats."""
    end = time.perf_counter_ns()
    first = answer.first_ns or end
    thinking = "" if stream else "".join(thoughts)
    out: dict[str, object] = {"model": turn.model, "created_at": timestamp()}
    if turn.chat:
        message: dict[str, object] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if turn.tool_calls is not None and not stream:
            message["tool_calls"] = turn.tool_calls
        out["message"] = message
    else:
        out["response"] = text
        if thinking:
            out["thinking"] = thinking
    out["done"] = True
    out["done_reason"] = answer.done_reason
    out["total_duration"] = end - started
    out["load_duration"] = ready - started
    out["prompt_eval_count"] = turn.prompt_tokens
    out["prompt_eval_duration"] = max(first - ready, 1)
    out["eval_count"] = answer.eval_count
    out["eval_duration"] = max(end - first, 1)
    return out
