"""Error codes on the wire and which of them a client may retry."""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "http_status", "is_retryable"]


class ErrorCode(enum.StrEnum):
    """Every `error.code` ollamesh sends; clients must tolerate codes added later."""

    BAD_REQUEST = "bad_request"
    MODEL_NOT_FOUND = "model_not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    NO_HEALTHY_HOST = "no_healthy_host"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    # The host (or its kind of engine) cannot do this at all: an OpenAI-compatible
    # engine pulls and deletes no models. Asking again will not help.
    NOT_SUPPORTED = "not_supported"
    INTERNAL = "internal"


_RETRYABLE = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.OVERLOADED,
        ErrorCode.NO_HEALTHY_HOST,
        ErrorCode.TIMEOUT,
        ErrorCode.UPSTREAM_ERROR,
        ErrorCode.UNAVAILABLE,
    }
)

# The HTTP status each code maps to, for the NATS micro-service error header and gateways.
_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.NO_HEALTHY_HOST: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UPSTREAM_ERROR: 502,
    ErrorCode.CANCELLED: 499,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.NOT_SUPPORTED: 501,
    ErrorCode.INTERNAL: 500,
}


def is_retryable(code: str) -> bool:
    """Say whether sending the same request again may succeed."""
    return code in _RETRYABLE


def http_status(code: str) -> int:
    """The HTTP status that best says what `code` means (500 for unknown codes)."""
    try:
        return _STATUS[ErrorCode(code)]
    except ValueError:
        return 500
