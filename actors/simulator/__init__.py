"""A simulated Ollama host or llama-server: deterministic answers, faults on demand."""

from actors.simulator.app import BUSY_ERROR, VERSION, build_app
from actors.simulator.catalogue import ModelInfo, canonical_name, describe
from actors.simulator.engine import (
    DEFAULT_MODELS,
    Busy,
    Engine,
    Fault,
    FaultKind,
    Loaded,
    Stats,
    parse_keep_alive,
)
from actors.simulator.scripts import Script
from actors.simulator.server import SimulatorServer, run_forever

__all__ = [
    "BUSY_ERROR",
    "DEFAULT_MODELS",
    "VERSION",
    "Busy",
    "Engine",
    "Fault",
    "FaultKind",
    "Loaded",
    "ModelInfo",
    "Script",
    "SimulatorServer",
    "Stats",
    "build_app",
    "canonical_name",
    "describe",
    "parse_keep_alive",
    "run_forever",
]
