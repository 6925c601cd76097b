"""Admission policy, apart from I/O: validate a decoded request and choose its model."""

from __future__ import annotations

from collections.abc import Mapping

from bus.config import RouterConfig
from bus.errors import BadRequest, ModelNotFound, quote
from bus.subjects import canonical_model
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Request

__all__ = ["resolve_model", "validate"]

_CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


def validate(request: Request, limits: RouterConfig) -> None:
    """Refuse what no host could serve well; raise `BadRequest` naming the field."""
    match request:
        case GenerateRequest():
            if not request.prompt.strip() and not request.images:
                raise BadRequest("prompt is empty")
            if isinstance(request.format, str) and request.format not in ("", "json"):
                raise BadRequest('format must be "json" or a JSON schema object')
        case ChatRequest():
            if not request.messages:
                raise BadRequest("messages is empty")
            for i, message in enumerate(request.messages):
                if message.role not in _CHAT_ROLES:
                    raise BadRequest(
                        f"messages[{i}].role must be one of {sorted(_CHAT_ROLES)},"
                        f" got {quote(message.role)}"
                    )
            if isinstance(request.format, str) and request.format not in ("", "json"):
                raise BadRequest('format must be "json" or a JSON schema object')
        case EmbedRequest():
            texts = [request.input] if isinstance(request.input, str) else request.input
            if not texts or not all(t.strip() for t in texts):
                raise BadRequest("input is empty")
            if request.stream:
                raise BadRequest("embed is not streamed: send stream false")
    options = request.options
    if options is not None and (options.num_predict or 0) > limits.max_num_predict:
        raise BadRequest(
            f"options.num_predict {options.num_predict} is over the limit"
            f" of {limits.max_num_predict}"
        )


def resolve_model(request: Request, roles: Mapping[str, str]) -> str | None:
    """The model named by a `role` alias, a model field naming a role, or a model name.

    None when the request names neither: the router then chooses.
    """
    if request.role is not None:
        if request.role not in roles:
            known = ", ".join(sorted(roles))
            raise BadRequest(f"unknown role {quote(request.role)}; roles: {known}")
        return canonical_model(roles[request.role])
    if request.model is None:
        return None
    if not request.model.strip():
        raise ModelNotFound(
            f"model {quote(request.model)} names no model; name one or a role, or leave"
            " `model` out to let the router choose"
        )
    return canonical_model(roles.get(request.model, request.model))
