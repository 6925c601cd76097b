"""Ollama's native HTTP API over the simulator's engine, as a Starlette app."""

from __future__ import annotations

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

__all__ = ["BUSY_ERROR", "VERSION", "build_app"]

VERSION = "0.12.6"


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("404 page not found", status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return PlainTextResponse("405 method not allowed", status_code=405, headers=headers)


def build_app(engine: Engine) -> Starlette:
    """Build the ASGI app of one simulated Ollama host over `engine`."""
    inference = InferenceApi(engine)
    models = ModelsApi(engine, VERSION)

    def api(handler: Handler, *, guarded: bool = False) -> Endpoint:
        return Endpoint(handler, engine, guarded=guarded)

    routes = [
        Route("/", api(models.root), methods=["GET"]),
        Route("/api/version", api(models.version), methods=["GET"]),
        Route("/api/tags", api(models.tags), methods=["GET"]),
        Route("/api/ps", api(models.ps), methods=["GET"]),
        Route("/api/show", api(models.show), methods=["POST"]),
        Route("/api/delete", api(models.delete), methods=["DELETE"]),
        Route("/api/copy", api(models.copy), methods=["POST"]),
        Route("/api/pull", api(models.pull, guarded=True), methods=["POST"]),
        Route("/api/generate", api(inference.generate, guarded=True), methods=["POST"]),
        Route("/api/chat", api(inference.chat, guarded=True), methods=["POST"]),
        Route("/api/embed", api(inference.embed, guarded=True), methods=["POST"]),
        Route("/api/embeddings", api(inference.embeddings, guarded=True), methods=["POST"]),
        *control_routes(engine),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
