"""`ollamesh generate` and `ollamesh chat`: stream answers through NATS to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors

from bus.client import ChainStream, ChunkStream, Client
from bus.errors import BadRequest
from schemas import Done, Message, RecorderState

__all__ = ["cancel_on_the_way_out", "chat", "generate", "queues"]

T = TypeVar("T")
# How long a Ctrl-C'd answer may take to send its cancel on the way out.
_CANCEL_S = 0.5


def _stats(done: Done | None) -> str:
    if done is None:
        return ""
    seconds = done.eval_duration / 1e9
    rate = f", {done.eval_count / seconds:.1f} tokens/s" if seconds > 0 else ""
    return f"[{done.model} on {done.host}: {done.eval_count} tokens{rate}]"


async def _off_loop(read: Callable[[], T]) -> T:
    """Run a blocking read (of stdin) in a daemon thread and await its result.

    Not `asyncio.to_thread`: the loop's executor is waited for on the way out, so a
    thread blocked on a terminal would keep a Ctrl-C'd command alive until Enter.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not result.done():  # else cancelled meanwhile
            outcome()

    def run() -> None:
        try:
            value = read()
        except Exception as exc:
            outcome = functools.partial(result.set_exception, exc)
        else:
            outcome = functools.partial(result.set_result, value)
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="ollamesh-stdin", daemon=True).start()
    return await result


async def cancel_on_the_way_out(stream: ChunkStream | ChainStream) -> None:
    """Ctrl-C'd: ask the fleet to stop the request (the fleet need not go on generating
    for nobody), within `_CANCEL_S`; a cancel that cannot be sent is said, not raised."""
    try:
        async with asyncio.timeout(_CANCEL_S):
            await stream.cancel()
    except (TimeoutError, nats.errors.Error) as exc:
        print(f"could not cancel {stream.request_id}: {exc!r}", file=sys.stderr)


async def _print_stream(stream: ChunkStream) -> str:
    parts = []
    try:
        async for chunk in stream:
            parts.append(chunk.text)
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    except asyncio.CancelledError:
        await cancel_on_the_way_out(stream)
        raise
    sys.stdout.write("\n")
    print(_stats(stream.done), file=sys.stderr)
    return "".join(parts)


async def generate(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Send one prompt and print the answer as it arrives."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        fields: dict[str, Any] = {"options": options or None, "priority": args.priority}
        if args.system:
            fields["system"] = args.system
        if args.no_stream:
            result = await client.generate(args.model, args.prompt, stream=False, **fields)
            print(result.response)
        else:
            stream = await client.generate(args.model, args.prompt, stream=True, **fields)
            await _print_stream(stream)
    return 0


async def chat(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Chat: one message from the command line, or a conversation read from stdin."""
    history: list[Message] = []
    if args.system:
        history.append(Message(role="system", content=args.system))
    interactive = args.message is None
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        while True:
            if interactive:
                if sys.stdin.isatty():
                    print(">>> ", end="", file=sys.stderr, flush=True)
                # Read in a thread so the connection keeps answering pings meanwhile.
                line = await _off_loop(sys.stdin.readline)
                if not line:
                    return 0
                text = line.strip()
                if not text:
                    continue
            else:
                text = args.message
            history.append(Message(role="user", content=text))
            if args.no_stream:
                result = await client.chat(
                    args.model,
                    history,
                    stream=False,
                    options=options or None,
                    priority=args.priority,
                )
                answer = result.message.content
                print(answer)
            else:
                stream = await client.chat(
                    args.model,
                    history,
                    stream=True,
                    options=options or None,
                    priority=args.priority,
                )
                answer = await _print_stream(stream)
            history.append(Message(role="assistant", content=answer))
            if not interactive:
                return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print rows in aligned columns: the first left-aligned, the others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))


def _fig(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


async def queues(args: argparse.Namespace) -> int:
    """Print waiting and running work per model, one row each."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        stats = await client.queues()
    header = ("model", "interactive", "batch", "running", "slots", "drained/s")
    _table(
        header,
        [
            (q.model, str(q.interactive), str(q.batch), str(q.running), str(q.slots),
             f"{q.drain_per_s:.2f}")
            for q in stats.models
        ],
    )  # fmt: skip
    return 0


async def stats(args: argparse.Namespace) -> int:
    """Print request figures per model and per host over one window."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        fleet = await client.stats()
    header = ("model / host", "requests", "ok", "p50 ms", "p99 ms", "ttft p50", "ttft p99",
              "tokens/s", "cache hits")  # fmt: skip
    rows = [
        (r.model or r.host or "?", str(r.requests), _fig(r.success_rate, ".1%"),
         _fig(r.latency_ms_p50), _fig(r.latency_ms_p99), _fig(r.ttft_ms_p50),
         _fig(r.ttft_ms_p99), _fig(r.tokens_per_s), _fig(r.cache_hit_rate, ".1%"))
        for r in fleet.windows.get(args.window, [])
    ]  # fmt: skip
    print(f"last {args.window}:")
    _table(header, rows)
    if fleet.recorder is not None:
        print(_recorder_line(fleet.recorder))
    return 0


def _recorder_line(state: RecorderState) -> str:
    """One line on the recorder behind the figures: writing or not, and what it set aside."""
    if not state.running:
        if not state.restarts:
            return "recorder: NOT WRITING (its loop has not started)"
        return f"recorder: RESTARTING after {state.last_error} ({_restarts(state.restarts)})"
    line = f"recorder: writing, {state.written:,} rows since start"
    if state.set_aside or state.dead_letters:
        line += f", {state.set_aside:,} set aside ({state.dead_letters:,} in dead_letters)"
    if state.restarts:
        line += f", {_restarts(state.restarts)} (last: {state.last_error})"
    return line


def _restarts(n: int) -> str:
    return f"{n} restart" + ("" if n == 1 else "s")


async def invalidate(args: argparse.Namespace) -> int:
    """Drop cached answers of one model, or all."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        removed = await client.invalidate_cache(args.model)
    print(f"removed {removed} cached answers" + (f" of {args.model}" if args.model else ""))
    return 0


def _pairs(items: list[str] | None) -> dict[str, Any]:
    """`k=v` arguments; a value that reads as JSON (a number, true) is taken as such."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"expected name=value, got {item!r}")
        try:
            out[key] = msgspec.json.decode(value)
        except msgspec.DecodeError:
            out[key] = value
    return out


def _read(file: str) -> str:
    return sys.stdin.read() if file == "-" else Path(file).read_text()


async def prompts(args: argparse.Namespace) -> int:
    """`ollamesh prompts put|get|list|delete|render`."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        match args.prompts_command:
            case "put":
                text = await _off_loop(lambda: _read(args.file))
                prompt = await client.put_prompt(
                    args.name, text, parameters=_pairs(args.param), description=args.description
                )
                names = ", ".join(prompt.variables) or "none"
                print(f"{prompt.name} version {prompt.version}: variables {names}")
            case "get":
                prompt = await client.get_prompt(args.name, args.version)
                print(f"# {prompt.name} version {prompt.version} {prompt.parameters}")
                print(prompt.template)
            case "list":
                rows = [
                    (p.name, str(p.version), str(p.usage.uses), _fig(p.usage.success_rate, ".1%"),
                     _fig(p.usage.avg_latency_ms), ", ".join(p.variables))
                    for p in await client.list_prompts()
                ]  # fmt: skip
                _table(("name", "version", "uses", "ok", "avg ms", "variables"), rows)
            case "delete":
                removed = await client.delete_prompt(args.name, args.version)
                print(f"deleted {removed} version(s) of {args.name}")
            case _:
                rendered = await client.render_prompt(args.name, _pairs(args.var), args.version)
                print(rendered.text)
                if rendered.unused:
                    print(f"unused variables: {', '.join(rendered.unused)}", file=sys.stderr)
    return 0
