"""Requests that name a stored prompt template: render it through the prompt store."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from bus.errors import BadRequest
from bus.rpc import call
from bus.subjects import Subjects
from schemas import ChatRequest, Error, GenerateRequest, Message, Options, Request, encode
from schemas.templates import PromptRender, Rendered

__all__ = ["apply_template", "template_options"]

_RENDER_TIMEOUT_S = 5.0


_decode = msgspec.json.Decoder(Rendered | Error).decode


def template_options(parameters: dict[str, Any], asked: Options | None) -> Options | None:
    """The template's stored parameters, overridden by what the request sets."""
    given = msgspec.structs.asdict(asked) if asked else {}
    merged = {**parameters, **{k: v for k, v in given.items() if v is not None}}
    if not merged:
        return None
    try:
        return msgspec.convert(merged, Options)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"the template's parameters are not valid options: {exc}") from exc


async def apply_template(nc: NATS, subjects: Subjects, request: Request) -> Request:
    """Render the template a generate or chat request names into its text.

    Generate: the rendered text is the prompt. Chat: it is appended as a user message.
    The template's parameters (e.g. temperature) apply unless the request sets them.
    """
    if not isinstance(request, GenerateRequest | ChatRequest) or not request.prompt_template:
        return request
    body = encode(
        PromptRender(
            name=request.prompt_template,
            version=request.template_version,
            variables=request.variables or {},
        )
    )
    subject = subjects.prompts("render")
    reply: Rendered = await call(
        nc, subject, body, _decode, _RENDER_TIMEOUT_S, service="prompt store"
    )
    options = template_options(reply.parameters, request.options)
    if isinstance(request, GenerateRequest):
        return msgspec.structs.replace(request, prompt=reply.text, options=options)
    messages = [*request.messages, Message(role="user", content=reply.text)]
    return msgspec.structs.replace(request, messages=messages, options=options)
