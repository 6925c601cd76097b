"""The exceptions ollamesh raises in-process, one per wire error code.

A message never carries unbounded input: `quote` shows at most a short prefix of a value
the caller sent, and every message is cut at `MESSAGE_MAX` characters, so an error about
a 5 MB field is a few hundred bytes on the wire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from schemas import Error, ErrorCode, is_retryable

__all__ = [
    "MESSAGE_MAX",
    "BadRequest",
    "Cancelled",
    "Internal",
    "ModelNotFound",
    "NoHealthyHost",
    "NotSupported",
    "OllameshError",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "Refused",
    "Timeout",
    "Unavailable",
    "UpstreamError",
    "error_from_wire",
    "logged",
    "quote",
]

# The longest message an error carries; the rest is cut with a note of how much.
MESSAGE_MAX = 1000
_QUOTE_MAX = 64


def quote(value: object, limit: int = _QUOTE_MAX) -> str:
    """`repr(value)`, or of its first `limit` characters with the full length noted."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}... ({len(text)} characters)"


def _bounded(message: str) -> str:
    if len(message) <= MESSAGE_MAX:
        return message
    return f"{message[:MESSAGE_MAX]}... ({len(message) - MESSAGE_MAX} more characters)"


class OllameshError(Exception):
    """Base of every ollamesh failure; carries the wire error's fields."""

    code: str = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | None = None,
        request_id: str | None = None,
    ) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        self.retryable = is_retryable(self.code) if retryable is None else retryable
        self.retry_after_ms = retry_after_ms
        self.request_id = request_id

    def to_wire(self, request_id: str | None = None, seq: int | None = None) -> Error:
        """The `error` message that tells a client about this failure."""
        return Error(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
            request_id=request_id or self.request_id,
            seq=seq,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, request_id={self.request_id!r})"


class BadRequest(OllameshError, ValueError):
    code = ErrorCode.BAD_REQUEST


class ModelNotFound(OllameshError, LookupError):
    code = ErrorCode.MODEL_NOT_FOUND


class PayloadTooLarge(OllameshError, ValueError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class RateLimited(OllameshError):
    code = ErrorCode.RATE_LIMITED


class Overloaded(OllameshError):
    code = ErrorCode.OVERLOADED


class NoHealthyHost(OllameshError):
    code = ErrorCode.NO_HEALTHY_HOST


class Timeout(OllameshError, TimeoutError):
    code = ErrorCode.TIMEOUT


class UpstreamError(OllameshError):
    code = ErrorCode.UPSTREAM_ERROR


class Cancelled(OllameshError):
    code = ErrorCode.CANCELLED


class Unavailable(OllameshError, ConnectionError):
    """NATS is unreachable, or nothing serves the subject (no router running)."""

    code = ErrorCode.UNAVAILABLE


class Refused(OllameshError, PermissionError):
    """NATS refused the connection's credentials (or they cannot be read): in-process
    only, never a wire error; trying again with the same credentials will not help."""

    code = "refused"


class NotSupported(OllameshError):
    code = ErrorCode.NOT_SUPPORTED


class Internal(OllameshError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[OllameshError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        ModelNotFound,
        PayloadTooLarge,
        RateLimited,
        Overloaded,
        NoHealthyHost,
        Timeout,
        UpstreamError,
        Cancelled,
        Unavailable,
        NotSupported,
        Internal,
    )
}


def error_from_wire(error: Error) -> OllameshError:
    """Turn a wire `error` into the matching exception; unknown codes stay readable."""
    cls = _BY_CODE.get(error.code, OllameshError)
    exc = cls(
        error.message,
        retryable=error.retryable,
        retry_after_ms=error.retry_after_ms,
        request_id=error.request_id,
    )
    if cls is OllameshError:
        exc.code = error.code
    return exc


@contextlib.contextmanager
def logged(log: Any, event: str, **fields: Any) -> Iterator[None]:
    """Go on past a failure of a best-effort step (an ack, a cleanup): log it as `event`
    with its traceback rather than hide it."""
    try:
        yield
    except Exception as exc:
        log.warning(event, error=repr(exc), exc_info=True, **fields)
