"""One answer, three shapes: the `done` of a stream, or the result Ollama's non-streamed
API gives. The executor and the cache both deliver through here."""

from __future__ import annotations

import msgspec

from schemas.replies import ChatResult, Done, EmbedResult, Figures, GenerateResult
from schemas.requests import Kind, Message
from schemas.work import Answer

__all__ = ["STAT_FIELDS", "done_of", "result_of"]

# Ollama's figures for an answer, under Ollama's names.
STAT_FIELDS = tuple(f.name for f in msgspec.structs.fields(Figures))


def _served(answer: Answer, request_id: str, cached: bool) -> dict[str, object]:
    return {
        "request_id": request_id,
        "model": answer.model,
        "host": answer.host,
        "fallback_from": answer.fallback_from,
        "cached": cached,
        "moved": answer.moved and not cached,  # a replay moved nowhere
        **{name: getattr(answer, name) for name in STAT_FIELDS},
    }


def done_of(answer: Answer, request_id: str, *, cached: bool = False) -> Done:
    """The last message of a stream that carried `answer`."""
    return Done(**_served(answer, request_id, cached))  # type: ignore[arg-type]


def result_of(
    answer: Answer, request_id: str, *, cached: bool = False
) -> GenerateResult | ChatResult | EmbedResult:
    """`answer` as a non-streamed reply of its kind."""
    served = _served(answer, request_id, cached)
    if answer.kind is Kind.EMBED:
        return EmbedResult(
            request_id=request_id,
            model=answer.model,
            host=answer.host,
            fallback_from=answer.fallback_from,
            cached=cached,
            embeddings=answer.embeddings or [],
            total_duration=answer.total_duration,
            load_duration=answer.load_duration,
            prompt_eval_count=answer.prompt_eval_count,
        )
    if answer.kind is Kind.CHAT:
        message = Message(
            role="assistant",
            content=answer.text,
            thinking=answer.thinking,
            tool_calls=answer.tool_calls,
        )
        return ChatResult(**served, message=message, done=True)  # type: ignore[arg-type]
    return GenerateResult(
        **served,  # type: ignore[arg-type]
        response=answer.text,
        thinking=answer.thinking,
        done=True,
    )
