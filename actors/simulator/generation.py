"""One generate or chat answer: planned from the request, then paced out token by token."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.simulator.catalogue import ModelInfo
from actors.simulator.engine import Fault
from actors.simulator.text import Sampler, count_tokens, split_json
from actors.simulator.wire import (
    BadRequest,
    ChatMessage,
    ChatRequest,
    GenerateRequest,
    Options,
    thinks,
)

__all__ = [
    "CRASH_ERROR",
    "MIDSTREAM_ERROR",
    "Answer",
    "HostDied",
    "ModelFailed",
    "Truncated",
    "Turn",
    "plan_chat",
    "plan_generate",
    "token_ids",
]

CRASH_ERROR = "llama runner process has terminated: exit status 2"
MIDSTREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
_IMAGE_TOKENS = 576  # what one image costs a llava-style projector
_TEMPLATE_TOKENS = 8  # role headers and separators a chat template adds per message
_YIELD_EVERY = 32  # at full speed, let other connections run this often


_STRIKES = frozenset({"die_after", "error_after", "truncate_after", "stall"})


class HostDied(Exception):
    """The simulated host crashes here: the connection must drop without another byte."""


class ModelFailed(Exception):
    """The model failed mid-answer; Ollama reports that as an `{"error": ...}` line."""


class Truncated(Exception):
    """The body ends here, cleanly, without the final `done` line."""


@dataclass(slots=True)
class Turn:
    """Everything decided about one answer before its first token."""

    chat: bool
    model: str  # as the request spelled it: Ollama echoes that, not the canonical name
    thinking: list[str]
    content: list[str]
    limited: bool  # num_predict cut the content: running out of it means "length"
    stops: list[str]
    prompt_tokens: int
    context: list[int] | None  # generate's token context so far (None for chat and raw)
    # A chat with tools whose last message is the user's: the model calls a tool instead
    # of answering (its call's tokens are generated but not streamed as content).
    tool_calls: list[dict[str, Any]] | None = None


def token_ids(text: str) -> list[int]:
    """Make stand-in token ids of `text` for generate's `context`."""
    return [zlib.crc32(word.encode()) % 128000 for word in text.split()]


def _format(fmt: object) -> object:
    if fmt in (None, ""):
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    raise BadRequest('invalid format: expected "json" or a valid JSON schema')


def _tokens(
    sampler: Sampler, fmt: object, think: bool, options: Options, limit: int | None = None
) -> tuple[list[str], list[str], bool]:
    if limit is None:
        limit = options.num_predict if options.num_predict is not None else -1
    content = split_json(sampler.json_text(fmt)) if fmt else sampler.answer(limit)
    # Thoughts are drawn after the answer so `think` does not change the answer itself.
    thinking = sampler.thoughts() if think else []
    if limit < 0:
        return thinking, content, False
    thinking = thinking[:limit]
    room = limit - len(thinking)
    return thinking, content[:room], len(content) >= room


def _think(value: bool | str | None, info: ModelInfo, label: str) -> bool:
    wanted = thinks(value)
    if wanted and not info.thinks:
        raise BadRequest(f'"{label}" does not support thinking')
    # A thinking model thinks unless told not to, as Ollama's do.
    return info.thinks and wanted is not False


def plan_generate(req: GenerateRequest, info: ModelInfo, label: str) -> Turn:
    """Plan the answer to a generate request with a prompt (BadRequest as Ollama would)."""
    fmt = _format(req.format)
    think = _think(req.think, info, label)
    options = req.options or Options()
    if req.raw and (req.template or req.system or req.context):
        raise BadRequest("raw mode does not support template, system, or context")
    prompt, system = req.prompt or "", req.system or ""
    images = req.images or []
    if req.raw or req.suffix or req.context:
        asked = (system, prompt, req.suffix, req.format, req.context, len(images))
        key = msgspec.json.encode(asked)
    else:
        # The template renders the prompt as a chat's user message: the model answers
        # it as it answers that chat.
        turn = [ChatMessage("system", system)] if system else []
        turn.append(ChatMessage("user", prompt, req.images))
        key = _chat_key(turn, req.format, None)
    sampler = Sampler(info.name, key, options.seed, options.temperature)
    thinking, content, limited = _tokens(sampler, fmt, think, options)
    template = 0 if req.raw else 2 * _TEMPLATE_TOKENS
    prompt_tokens = (
        count_tokens(system) + count_tokens(prompt) + count_tokens(req.suffix or "")
        + template + len(req.context or ()) + _IMAGE_TOKENS * len(images)
    )  # fmt: skip
    context = None if req.raw else [*(req.context or ()), *token_ids(f"{system} {prompt}")]
    return Turn(False, label, thinking, content, limited, options.stops(), prompt_tokens, context)


def plan_chat(req: ChatRequest, info: ModelInfo, label: str) -> Turn:
    """Plan the answer to a chat request with messages (BadRequest as Ollama would)."""
    fmt = _format(req.format)
    think = _think(req.think, info, label)
    options = req.options or Options()
    messages = req.messages or []
    tools = _tools(req.tools, info, label)
    calls = None
    if tools and messages and messages[-1].role == "user":
        sampler = Sampler(info.name, _chat_key(messages, req.format, req.tools), *_draw(options))
        calls = [sampler.tool_call(tools)]
        thinking = sampler.thoughts() if think else []
        content, limited = split_json(msgspec.json.encode(calls).decode()), False
    elif messages and messages[-1].role == "assistant":
        thinking, content, limited = _continue(req, messages, fmt, think, options, info)
    else:
        sampler = Sampler(info.name, _chat_key(messages, req.format, req.tools), *_draw(options))
        thinking, content, limited = _tokens(sampler, fmt, think, options)
    prompt_tokens = _TEMPLATE_TOKENS + sum(
        _TEMPLATE_TOKENS + count_tokens(m.content or "") + _IMAGE_TOKENS * len(m.images or ())
        for m in messages
    )
    stops = options.stops()
    return Turn(True, label, thinking, content, limited, stops, prompt_tokens, None, calls)


def _chat_key(messages: list[ChatMessage], fmt: object, tools: object) -> bytes:
    return msgspec.json.encode((messages, fmt, tools))


def _draw(options: Options) -> tuple[int | None, float | None]:
    return options.seed, options.temperature


def _pieces(text: str, fmt: object) -> int:
    """How many of the model's tokens `text` is (words, or JSON pieces)."""
    return len(split_json(text)) if fmt else len(text.split())


def _continue(
    req: ChatRequest,
    messages: list[ChatMessage],
    fmt: object,
    think: bool,
    options: Options,
    info: ModelInfo,
) -> tuple[list[str], list[str], bool]:
    """A chat whose last message is the assistant's: go on from it, as Ollama does.

    If it begins the answer the model gives to the conversation before it, the model
    goes on with the rest of that answer (at a fixed seed or temperature 0, exactly
    the rest: the same answer, cut anywhere); `num_predict` counts from the message's
    end. Any other text is continued with an answer of its own.
    """
    prefix, asked = messages[-1], messages[:-1]
    said, thought = prefix.content or "", prefix.thinking or ""
    done = _pieces(said, fmt) + len(thought.split())
    limit = options.num_predict if options.num_predict is not None else -1
    sampler = Sampler(info.name, _chat_key(asked, req.format, req.tools), *_draw(options))
    whole = limit + done if limit >= 0 else limit
    thinking, content, limited = _tokens(sampler, fmt, think, options, whole)
    k_think = len(thought.split()) if said == "" else len(thinking)
    k_said = _pieces(said, fmt)
    if "".join(thinking[:k_think]) == thought and "".join(content[:k_said]) == said:
        return thinking[k_think:], content[k_said:], limited
    sampler = Sampler(info.name, _chat_key(messages, req.format, req.tools), *_draw(options))
    return _tokens(sampler, fmt, False, options)


def _tools(tools: list[Any] | None, info: ModelInfo, label: str) -> list[dict[str, Any]]:
    if not tools:
        return []
    if not info.calls_tools:
        raise BadRequest(f"registry.ollama.ai/library/{label} does not support tools")
    if not all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools):
        raise BadRequest("invalid tools: each needs a function")
    return tools


def _stop_at(text: str, stops: list[str]) -> int:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def _ends_with_partial_stop(text: str, stops: list[str]) -> bool:
    return any(text.endswith(s[:k]) for s in stops for k in range(1, len(s)))


class Answer:
    """The tokens of one turn as they come out of the model, with its faults and pace.

    Iterate `pieces()`; afterwards `eval_count`, `done_reason` and `first_ns` describe
    the answer. Raises HostDied or ModelFailed where a `die_after` or `error_after` fault
    strikes (ModelFailed saying `error` unless the fault has a message of its own); a
    `stall` waits there until it is cancelled.
    """

    __slots__ = ("done_reason", "error", "eval_count", "fault", "first_ns", "interval", "turn")

    def __init__(
        self, turn: Turn, fault: Fault | None, interval: float, error: str = MIDSTREAM_ERROR
    ) -> None:
        self.turn = turn
        self.fault = fault
        self.interval = interval
        self.error = error
        self.eval_count = 0
        self.done_reason = "length" if turn.limited else "stop"
        self.first_ns = 0

    def _strikes_at(self) -> int:
        fault = self.fault
        if fault is not None and fault.kind in _STRIKES:
            return fault.tokens
        return -1

    async def _strike(self) -> None:
        kind = self.fault.kind if self.fault is not None else "stall"
        if kind == "die_after":
            raise HostDied(f"simulated crash after {self.eval_count} tokens")
        if kind == "error_after":
            raise ModelFailed((self.fault and self.fault.message) or self.error)
        if kind == "truncate_after":
            raise Truncated
        await asyncio.Future()  # stall: nothing more, until the client or the host gives up

    async def pieces(self) -> AsyncIterator[tuple[bool, str]]:
        """Yield `(thinking, text)` as the model produces it, at the host's pace."""
        turn, interval, strike = self.turn, self.interval, self._strikes_at()
        if self.fault is not None and self.fault.kind == "slow_first_token":
            await asyncio.sleep(self.fault.delay_ms / 1000)
        loop = asyncio.get_running_loop()
        due = loop.time()
        self.first_ns = time.perf_counter_ns()
        stops = turn.stops
        sent = 0
        for thinking, tokens in ((True, turn.thinking), (False, turn.content)):
            pending = ""
            for token in tokens:
                if sent == strike:
                    await self._strike()
                # Every token the model makes takes its time, even one held back below.
                if interval:
                    due += interval
                    if (delay := due - loop.time()) > 0:
                        await asyncio.sleep(delay)
                elif self.eval_count % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                self.eval_count += 1
                if stops and not thinking:
                    # Hold back text that may begin a stop sequence, as Ollama does.
                    pending += token
                    cut = _stop_at(pending, stops)
                    if cut >= 0:
                        self.done_reason = "stop"
                        pending = pending[:cut]
                        break
                    if _ends_with_partial_stop(pending, stops):
                        continue
                    token, pending = pending, ""
                sent += 1
                yield thinking, token
            if pending:
                sent += 1
                yield thinking, pending
        if strike >= sent:
            # The answer ran out before the fault's token: it strikes before the final line.
            await self._strike()
