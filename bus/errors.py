"""The exceptions ollamesh raises in-process, one per wire error code."""

from __future__ import annotations

from schemas import Error, ErrorCode, is_retryable

__all__ = [
    "BadRequest",
    "Cancelled",
    "Internal",
    "ModelNotFound",
    "NoHealthyHost",
    "OllameshError",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "Timeout",
    "Unavailable",
    "UpstreamError",
    "error_from_wire",
]


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
