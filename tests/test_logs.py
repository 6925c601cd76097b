"""Logs: every line of a request's life names the request, in the router and the executor."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from actors.simulator.engine import Fault
from bus.client import Client
from schemas import Done

MODELS = ["llama3.2:3b"]


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log line at debug level or above, with context variables merged as in production."""
    lines: list[MutableMapping[str, Any]] = []

    def keep(logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
        lines.append(event)
        raise structlog.DropEvent

    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    yield lines
    structlog.configure(**previous)


async def test_every_line_of_a_request_names_it(
    sim_factory, stack_factory, client: Client, captured
) -> None:
    """A request whose first attempt hits a busy host (503) and is retried: the router's
    and the executor's lines about it, the retry included, all carry its id."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    sim.engine.set_fault(Fault(kind="busy", count=1))
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 3})
    await stream.text()
    assert isinstance(stream.done, Done) and stream.done.request_id
    rid = stream.done.request_id
    mine = [line for line in captured if line.get("request_id") == rid]
    events = {line["event"] for line in mine}
    assert {"request_queued", "request_retry", "request_done"} <= events, events
    about_requests = [line for line in captured if str(line["event"]).startswith("request_")]
    assert about_requests and all(line.get("request_id") == rid for line in about_requests)
