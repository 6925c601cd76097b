"""Simulated Ollama hosts for any test: started on free ports, killed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from actors.simulator import SimulatorServer

SIM_MODELS = ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text"]

SimFactory = Callable[..., Awaitable[SimulatorServer]]


@pytest_asyncio.fixture(loop_scope="session")
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators with any `SimulatorServer` arguments; every one is killed after."""
    started: list[SimulatorServer] = []

    async def make(**kwargs: Any) -> SimulatorServer:
        sim = SimulatorServer(**kwargs)
        started.append(sim)
        return await sim.start()

    yield make
    for sim in started:
        await sim.kill()


@pytest_asyncio.fixture(loop_scope="session")
async def sim(sim_factory: SimFactory) -> SimulatorServer:
    """One simulated host with a chat model, a larger one and an embedding model, full speed."""
    return await sim_factory(models=SIM_MODELS)
