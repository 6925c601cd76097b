"""`ollamesh sim`: serve a simulated Ollama host or llama-server (`actors.simulator`) until
SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from actors.simulator.engine import DEFAULT_MODELS, Fault
from actors.simulator.server import SimulatorServer, run_forever

__all__ = ["register", "run"]

_KINDS = (
    "busy",
    "error",
    "die_after",
    "error_after",
    "truncate_after",
    "stall",
    "slow_first_token",
)
# Where each API's real server listens by default: Ollama's port, llama-server's.
_PORTS = {"ollama": 11434, "openai": 8080}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `sim` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sim",
        help="serve a simulated Ollama host or llama-server (no GPU needed)",
        description=(
            "Serve Ollama's native API, or llama-server's OpenAI-compatible one, with "
            "deterministic answers and injectable faults."
        ),
    )
    p.add_argument(
        "--api",
        choices=tuple(_PORTS),
        default="ollama",
        help="the API to speak: Ollama's native one, or llama-server's (OpenAI-compatible)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port",
        type=int,
        help="port to listen on (default: 11434, or 8080 with --api openai; 0: any free)",
    )
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names")
    p.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="pace of each answer (0: full speed)"
    )
    p.add_argument("--num-parallel", type=int, default=4, help="parallel slots per model")
    p.add_argument("--max-queue", type=int, default=512, help="waiting requests before 503")
    p.add_argument("--load-ms", type=float, default=0.0, help="time to load a cold model")
    p.add_argument("--keep-alive", type=float, default=300.0, help="default keep_alive seconds")
    p.add_argument(
        "--pull-mb-per-second", type=float, default=0.0, help="download speed of pulls (0: instant)"
    )
    p.add_argument("--disk-gb", type=float, help="disk size for models (default: never full)")
    f = p.add_argument_group("fault at start-up (as POST /_sim/faults takes it)")
    f.add_argument("--fault", choices=_KINDS, help="the kind of fault to inject")
    f.add_argument("--fault-tokens", type=int, default=0, help="tokens before it strikes")
    f.add_argument("--fault-delay-ms", type=int, default=0, help="slow_first_token's delay")
    f.add_argument("--fault-count", type=int, help="affect only the next K requests")
    f.add_argument("--fault-models", help="comma-separated models it applies to (default: all)")
    f.add_argument("--fault-message", help="the error text to send instead of the default")
    p.set_defaults(func=run)


def _simulator(args: argparse.Namespace) -> SimulatorServer:
    sim = SimulatorServer(
        [m.strip() for m in args.models.split(",") if m.strip()],
        host=args.host,
        port=_PORTS[args.api] if args.port is None else args.port,
        tokens_per_second=args.tokens_per_second,
        num_parallel=args.num_parallel,
        max_queue=args.max_queue,
        load_ms=args.load_ms,
        keep_alive=args.keep_alive,
        pull_bytes_per_second=args.pull_mb_per_second * 1e6,
        disk_bytes=None if args.disk_gb is None else int(args.disk_gb * 1e9),
        api=args.api,
    )
    if args.fault:
        models = [m.strip() for m in args.fault_models.split(",")] if args.fault_models else None
        sim.engine.set_fault(
            Fault(
                kind=args.fault,
                tokens=args.fault_tokens,
                delay_ms=args.fault_delay_ms,
                count=args.fault_count,
                models=models,
                message=args.fault_message,
            )
        )
    return sim


def _runner() -> Callable[[Coroutine[Any, Any, bool]], bool]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run
    return uvloop.run


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM (then stop gracefully: 0) or SIGINT (at once: 130)."""
    from actors.runtime.logs import configure_logging

    configure_logging("info")
    try:
        sim = _simulator(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        interrupted = _runner()(run_forever(sim))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{sim.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130
    return 130 if interrupted else 0
