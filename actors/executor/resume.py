"""Mid-stream migration: an answer whose host fails after its first token goes on on
another host from the last token the client got.

The stored stream is the answer so far. Whoever goes on (the same executor after its
host failed, or another after the executor died) reads it there, numbers its chunks
after it, and asks its host to continue it:

- chat: the text so far as the assistant's message to continue (Ollama and llama.cpp
  continue a conversation's final assistant message);
- generate on a host whose generate completes the prompt as it is (an OpenAI-compatible
  engine's `/v1/completions`, or Ollama's `raw`): the prompt plus the text so far;
- generate through Ollama's template: the same turn as a chat, the text so far as the
  assistant's message to continue (Ollama renders a generate's prompt as the user's
  message of the model's chat template, so this is the prompt plus the text so far as
  the model sees it).

`num_predict` counts the tokens already sent. Not moved: a request that opted out
(`migrate: false`), an answer that called a tool, a generate with a `suffix` or its own
`template` (nothing to continue it with), and a stored stream with a gap.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from actors.executor.emit import SoFar, stored_messages
from schemas import ChatRequest, Chunk, GenerateRequest, Message, Request

__all__ = ["continued", "stored_so_far", "unmovable"]


async def stored_so_far(js: JetStreamContext, stream: str, subject: str) -> SoFar | None:
    """The answer so far on `subject`, or None if it cannot be continued (it called a
    tool, chunks are missing, or it already ended)."""
    chunks: dict[int, Chunk] = {}
    async for message in stored_messages(js, stream, subject):
        if not isinstance(message, Chunk) or message.tool_calls:
            return None
        chunks[message.seq] = message
    if not chunks or sorted(chunks) != list(range(1, len(chunks) + 1)):
        return None
    ordered = [chunks[seq] for seq in range(1, len(chunks) + 1)]
    return SoFar(
        seq=len(ordered),
        text="".join(c.text for c in ordered),
        thinking="".join(c.thinking or "" for c in ordered),
        tokens=sum(c.tokens for c in ordered),
    )


def unmovable(request: Request) -> str | None:
    """Why `request` cannot go on on another host mid-answer, or None if it can."""
    if not request.migrate:
        return "the request opted out (migrate: false)"
    if isinstance(request, ChatRequest):
        return None
    if not isinstance(request, GenerateRequest):
        return "an embedding is not streamed"
    if request.suffix or request.template:
        return "a generate with a suffix or its own template cannot be continued"
    return None


def continued(request: Request, so_far: SoFar, *, raw_completions: bool) -> Request | None:
    """The request (as its host gets it) that goes on after `so_far`; None if nothing is
    left to generate (`num_predict` was reached)."""
    assert isinstance(request, ChatRequest | GenerateRequest), "only answers move"
    options = request.options
    if options is not None and options.num_predict is not None and options.num_predict > 0:
        left = options.num_predict - so_far.tokens
        if left <= 0:
            return None
        options = msgspec.structs.replace(options, num_predict=left)
    prefix = Message(role="assistant", content=so_far.text, thinking=so_far.thinking or None)
    if isinstance(request, ChatRequest):
        return msgspec.structs.replace(
            request, messages=[*request.messages, prefix], options=options
        )
    if request.raw or raw_completions:
        return msgspec.structs.replace(
            request, prompt=request.prompt + so_far.text, options=options
        )
    system = [Message(role="system", content=request.system)] if request.system else []
    user = Message(role="user", content=request.prompt, images=request.images)
    return ChatRequest(
        model=request.model,
        messages=[*system, user, prefix],
        format=request.format,
        think=request.think,
        options=options,
        keep_alive=request.keep_alive,
        stream=True,
    )
