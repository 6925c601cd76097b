"""Failures only the HTTP side has: a route that does not exist, a missing or refused key.

Each carries its HTTP status; the route family (Ollama's, OpenAI's) decides the body."""

from __future__ import annotations

from bus.errors import OllameshError

__all__ = [
    "BodyTimeout",
    "Forbidden",
    "HttpError",
    "MethodNotAllowed",
    "RouteNotFound",
    "Unauthorized",
]


class HttpError(OllameshError):
    """A failure with its own HTTP status."""

    status = 400


class RouteNotFound(HttpError):
    code = "not_found"
    status = 404


class MethodNotAllowed(HttpError):
    code = "method_not_allowed"
    status = 405


class BodyTimeout(HttpError):
    """A body that does not arrive in time (a client stalled, or trickling it)."""

    code = "request_timeout"
    status = 408


class Unauthorized(HttpError):
    """No key, or one that is not (or no longer) valid."""

    code = "unauthorized"
    status = 401


class Forbidden(HttpError):
    """A valid key that may not do this (a model it is not allowed, an admin route)."""

    code = "forbidden"
    status = 403
