"""The `ollamesh` command: up, demo, sim, bench, generate, chat, reason, chains, construction,
queues, stats, cache, prompts, models, status, keys."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from actors.cli.run import SERVERS_GRACE_S, config_failed, run_async
from actors.runtime.logs import configure_logging
from actors.runtime.names import ACTORS, DEFAULT_ACTORS
from bus.config import ConfigError, load_config

__all__ = ["main"]

_DEFAULT_NATS = "nats://127.0.0.1:4222"


def _up(args: argparse.Namespace) -> int:
    from actors.runtime.supervisor import Stack, run_until_signalled

    config = load_config(args.config)
    configure_logging(config.log_level, args.log_format or config.log_format)
    named = args.actors.split(",") if args.actors else DEFAULT_ACTORS
    actors = tuple(a.strip() for a in named if a.strip())
    stack = Stack(config, actors=actors)
    return run_async(lambda: run_until_signalled(stack), grace=None)


def _bus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", default=os.environ.get("NATS_URL", _DEFAULT_NATS), help="NATS URL")
    p.add_argument("--prefix", default=os.environ.get("OLLAMESH_PREFIX", "llm"))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer")


def _client_args(p: argparse.ArgumentParser) -> None:
    _bus_args(p)
    p.add_argument("-m", "--model", help="model name or role (primary, fast, ...)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-predict", type=int, dest="num_predict")
    p.add_argument("--no-stream", action="store_true", help="print the whole answer at the end")
    p.add_argument("--priority", choices=["interactive", "batch"], default="interactive")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("temperature", "seed", "num_predict")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _generate(args: argparse.Namespace) -> int:
    from actors.cli.terminal import generate

    configure_logging("warning")
    return run_async(lambda: generate(args, _options(args)))


def _chat(args: argparse.Namespace) -> int:
    from actors.cli.terminal import chat

    configure_logging("warning")
    return run_async(lambda: chat(args, _options(args)))


def _stats(args: argparse.Namespace) -> int:
    from actors.cli.terminal import stats

    configure_logging("warning")
    return run_async(lambda: stats(args))


def _invalidate(args: argparse.Namespace) -> int:
    from actors.cli.terminal import invalidate

    configure_logging("warning")
    return run_async(lambda: invalidate(args))


def _prompts(args: argparse.Namespace) -> int:
    from actors.cli.terminal import prompts

    configure_logging("warning")
    return run_async(lambda: prompts(args))


def _queues(args: argparse.Namespace) -> int:
    from actors.cli.terminal import queues

    configure_logging("warning")
    return run_async(lambda: queues(args))


def _fleet(args: argparse.Namespace) -> int:
    from actors.cli.fleet import models, status

    configure_logging("warning")
    command = status if args.command == "status" else models
    return run_async(lambda: command(args))


def _reasoning(args: argparse.Namespace) -> int:
    from actors.cli.reason import chains, reason

    configure_logging("warning")
    command = reason if args.command == "reason" else chains
    return run_async(lambda: command(args))


def _construction(args: argparse.Namespace) -> int:
    from actors.cli.construction import construction

    configure_logging("warning")
    return run_async(lambda: construction(args))


def _keys(args: argparse.Namespace) -> int:
    from actors.cli.keys import keys

    configure_logging("warning")
    return run_async(lambda: keys(args))


def _demo(args: argparse.Namespace) -> int:
    from actors.cli.demo import demo

    configure_logging("info" if args.verbose else "error", "console")
    return run_async(lambda: demo(tokens_per_second=args.tokens_per_second), grace=SERVERS_GRACE_S)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from actors.cli.bench import register as register_bench
    from actors.cli.construction import register as register_construction
    from actors.cli.fleet import register as register_fleet
    from actors.cli.keys import register as register_keys
    from actors.cli.reason import register as register_reason
    from actors.cli.sim import register as register_sim

    parser = argparse.ArgumentParser(prog="ollamesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the actors (router + one executor per Ollama host)")
    up.add_argument("--config", help="TOML config file (default: $OLLAMESH_CONFIG)")
    up.add_argument(
        "--actors",
        help=f"comma-separated actors to run, of {','.join(ACTORS)}"
        f" (default: {','.join(DEFAULT_ACTORS)})",
    )
    up.add_argument("--log-format", choices=["auto", "json", "console"])
    up.set_defaults(func=_up)

    demo = sub.add_parser("demo", help="a scripted tour on an embedded server and simulated hosts")
    demo.add_argument("--tokens-per-second", type=float, default=150.0)
    demo.add_argument("-v", "--verbose", action="store_true", help="show the actors' logs")
    demo.set_defaults(func=_demo)

    gen = sub.add_parser("generate", help="stream a completion of PROMPT to the terminal")
    gen.add_argument("prompt")
    _client_args(gen)
    gen.set_defaults(func=_generate)

    chat = sub.add_parser("chat", help="chat with a model (reads lines from stdin)")
    chat.add_argument("message", nargs="?", help="one message, then exit (default: interactive)")
    _client_args(chat)
    chat.set_defaults(func=_chat)

    queues = sub.add_parser("queues", help="waiting and running work per model")
    _bus_args(queues)
    queues.set_defaults(func=_queues)

    stats = sub.add_parser("stats", help="requests, latency and tokens/s per model and host")
    _bus_args(stats)
    stats.add_argument("--window", choices=["1m", "1h", "1d"], default="1h")
    stats.set_defaults(func=_stats)

    cache = sub.add_parser("cache", help="manage the answer cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    inv = cache_sub.add_parser("invalidate", help="drop cached answers of one model, or all")
    _bus_args(inv)
    inv.add_argument("-m", "--model", help="only this model's answers (default: all)")
    inv.set_defaults(func=_invalidate)

    prompts = sub.add_parser("prompts", help="stored prompt templates: put, get, list, ...")
    verbs = prompts.add_subparsers(dest="prompts_command", required=True)
    put = verbs.add_parser("put", help="store a new version of a template")
    put.add_argument("name")
    put.add_argument("file", help="the template text, or - for stdin")
    put.add_argument("--param", action="append", help="a stored option, e.g. temperature=0.3")
    put.add_argument("--description", default="")
    for verb in ("get", "delete", "render"):
        v = verbs.add_parser(verb, help=f"{verb} a template (the latest version by default)")
        v.add_argument("name")
        v.add_argument("--version", type=int)
        if verb == "render":
            v.add_argument("--var", action="append", help="a variable, e.g. phase=3")
    verbs.add_parser("list", help="every template's latest version and usage")
    for v in verbs.choices.values():
        _bus_args(v)
    prompts.set_defaults(func=_prompts)

    register_fleet(sub, _bus_args, _fleet)
    register_reason(sub, _bus_args, _reasoning)
    register_construction(sub, _bus_args, _construction)
    register_keys(sub, _bus_args, _keys)
    register_sim(sub)
    register_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ollamesh` console script."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
    except ConfigError as exc:
        return config_failed(exc)
    except KeyboardInterrupt:  # Ctrl-C while still importing or parsing: no traceback
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
