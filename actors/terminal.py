"""`ollamesh generate` and `ollamesh chat`: stream answers through NATS to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bus.client import ChunkStream, Client
from schemas import Done, Message

__all__ = ["chat", "generate", "queues"]


def _stats(done: Done | None) -> str:
    if done is None:
        return ""
    seconds = done.eval_duration / 1e9
    rate = f", {done.eval_count / seconds:.1f} tokens/s" if seconds > 0 else ""
    return f"[{done.model} on {done.host}: {done.eval_count} tokens{rate}]"


async def _print_stream(stream: ChunkStream) -> str:
    parts = []
    async for chunk in stream:
        parts.append(chunk.text)
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
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
                line = await asyncio.to_thread(sys.stdin.readline)
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


async def queues(args: argparse.Namespace) -> int:
    """Print waiting and running work per model, one row each."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        stats = await client.queues()
    header = ("model", "interactive", "batch", "running", "slots", "drained/s")
    rows = [
        (
            q.model,
            str(q.interactive),
            str(q.batch),
            str(q.running),
            str(q.slots),
            f"{q.drain_per_s:.2f}",
        )
        for q in stats.models
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return 0
