"""The simulator's HTTP APIs over its engine, as Starlette apps: Ollama's native one, or
llama-server's OpenAI-compatible one."""

from __future__ import annotations

from typing import Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from actors.simulator.control import control_routes
from actors.simulator.engine import Engine
from actors.simulator.exchange import Endpoint, Handler
from actors.simulator.inference import BUSY_ERROR, InferenceApi
from actors.simulator.models import ModelsApi
from actors.simulator.openai_api import OpenAIApi, not_found

__all__ = ["BUSY_ERROR", "VERSION", "Api", "build_app"]

VERSION = "0.12.6"

Api = Literal["ollama", "openai"]


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("404 page not found", status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return PlainTextResponse("405 method not allowed", status_code=405, headers=headers)


def build_app(engine: Engine, api: Api = "ollama") -> Starlette:
    """Build the ASGI app of one simulated host over `engine`: an Ollama host, or with
    `api="openai"` a llama-server (whose lifespan loads its models; see `openai_api`).

    Both serve the `/_sim` control routes.
    """
    if api == "openai":
        llama = OpenAIApi(engine)
        return Starlette(
            routes=[*llama.routes(), *control_routes(engine)],
            exception_handlers={404: not_found, 405: not_found},
            lifespan=llama.lifespan,
        )
    inference = InferenceApi(engine)
    models = ModelsApi(engine, VERSION)

    def endpoint(handler: Handler, *, guarded: bool = False) -> Endpoint:
        return Endpoint(handler, engine, guarded=guarded)

    routes = [
        Route("/", endpoint(models.root), methods=["GET"]),
        Route("/api/version", endpoint(models.version), methods=["GET"]),
        Route("/api/tags", endpoint(models.tags), methods=["GET"]),
        Route("/api/ps", endpoint(models.ps), methods=["GET"]),
        Route("/api/show", endpoint(models.show), methods=["POST"]),
        Route("/api/delete", endpoint(models.delete), methods=["DELETE"]),
        Route("/api/copy", endpoint(models.copy), methods=["POST"]),
        Route("/api/pull", endpoint(models.pull, guarded=True), methods=["POST"]),
        Route("/api/generate", endpoint(inference.generate, guarded=True), methods=["POST"]),
        Route("/api/chat", endpoint(inference.chat, guarded=True), methods=["POST"]),
        Route("/api/embed", endpoint(inference.embed, guarded=True), methods=["POST"]),
        Route("/api/embeddings", endpoint(inference.embeddings, guarded=True), methods=["POST"]),
        *control_routes(engine),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
