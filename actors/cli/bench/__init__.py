"""`ollamesh bench`: the spine, the HTTP gateway, any host (a real engine), the cache, host
strategies on a skewed fleet, the reasoning coordinator and the construction analyzer,
measured against a direct call (or one host) in the same run; one JSON object on stdout."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from actors.cli.bench.harness import BenchError, machine
from actors.cli.run import run_async
from actors.runtime.logs import configure_logging
from bus.server import NatsServerError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser("bench", help="measure ollamesh against direct calls; print JSON")
    p.add_argument("--requests", type=int, default=400, help="requests per measured scenario")
    p.add_argument("--tokens", type=int, default=16, help="num_predict of each request")
    p.add_argument("--stream-tokens", type=int, default=512, help="num_predict of the 64 streams")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each")
    h = p.add_argument_group("the HTTP gateway (instead of the above)")
    h.add_argument("--http", action="store_true", help="direct HTTP vs through the gateway")
    h.add_argument("--http-requests", type=int, default=1000, help="requests per scenario")
    h.add_argument("--http-tokens", type=int, default=16, help="num_predict of each request")
    h.add_argument("--http-warmup", type=int, default=50, help="unmeasured requests before each")
    b = p.add_argument_group("any host, a real engine included (instead of the above)")
    b.add_argument("--backend", metavar="URL", help="the host: http://... or openai+http://...")
    b.add_argument("--backend-model", help="the host's own model id (default: the first listed)")
    b.add_argument("--backend-requests", type=int, default=200, help="requests per scenario")
    b.add_argument("--backend-tokens", type=int, default=16, help="max_tokens of each request")
    b.add_argument("--backend-warmup", type=int, default=10, help="unmeasured requests before each")
    f = p.add_argument_group("host strategies on a skewed fleet (instead of the above)")
    f.add_argument("--fleet", action="store_true", help="compare the host strategies")
    f.add_argument("--fleet-requests", type=int, default=256, help="requests per strategy")
    f.add_argument("--fleet-tokens", type=int, default=32, help="num_predict of each request")
    f.add_argument("--fleet-streams", type=int, default=64, help="concurrent streams")
    c = p.add_argument_group("the answer cache (instead of the above)")
    c.add_argument("--cache", action="store_true", help="cache hits and single-flight")
    c.add_argument("--cache-requests", type=int, default=400, help="requests per figure")
    r = p.add_argument_group("the reasoning coordinator (instead of the above)")
    r.add_argument("--reason", action="store_true", help="parallel steps and cost per step")
    r.add_argument("--reason-chains", type=int, default=20, help="chains of each shape")
    k = p.add_argument_group("the construction analyzer (instead of the above)")
    k.add_argument("--construction", action="store_true", help="a long PDF on 1 and 3 hosts")
    k.add_argument("--pages", type=int, default=100, help="pages of the PDF")
    k.add_argument("--fee-calls", type=int, default=10_000, help="fee calculations timed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the bench on uvloop with quiet logs; return the exit code."""
    configure_logging("warning", "json")
    return run_async(lambda: bench(args))


async def bench(args: argparse.Namespace) -> int:
    """Run the bench asked for; print one JSON object on stdout."""
    sizes = (
        args.http_requests, args.http_tokens, args.fleet_requests, args.fleet_tokens,
        args.fleet_streams, args.cache_requests, args.reason_chains, args.pages, args.fee_calls,
        args.backend_requests, args.backend_tokens,
    )  # fmt: skip
    if (
        min(args.requests, args.tokens, args.stream_tokens, *sizes) < 1
        or min(args.warmup, args.http_warmup, args.backend_warmup) < 0
    ):
        print("error: request counts, token counts and streams must be positive", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C does, so every child is stopped and temp files removed.
    main, terminated = asyncio.current_task(), asyncio.Event()
    assert main is not None

    def on_sigterm() -> None:
        terminated.set()
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        if args.construction:
            from actors.cli.bench.construction import construction_bench

            figures = await construction_bench(args.pages, args.fee_calls)
        elif args.reason:
            from actors.cli.bench.reason import reason_bench

            figures = await reason_bench(args.reason_chains)
        elif args.cache:
            from actors.cli.bench.cache import cache_bench

            figures = await cache_bench(args.cache_requests)
        elif args.backend:
            from actors.cli.bench.backend import backend_bench

            figures = await backend_bench(
                args.backend, args.backend_model, args.backend_requests, args.backend_tokens,
                args.backend_warmup,
            )  # fmt: skip
        elif args.http:
            from actors.cli.bench.http import http_bench

            figures = await http_bench(args.http_requests, args.http_tokens, args.http_warmup)
        elif args.fleet:
            from actors.cli.bench.fleet import fleet_bench

            figures = await fleet_bench(args.fleet_requests, args.fleet_tokens, args.fleet_streams)
        else:
            from actors.cli.bench.spine import spine_bench

            figures = await spine_bench(args)
    except (BenchError, NatsServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        main.uncancel()
        print("error: terminated", file=sys.stderr)
        return 143
    print(json.dumps({"machine": machine(), **figures}, indent=2))
    return 0
