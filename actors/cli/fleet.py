"""`ollamesh models <verb>` and `ollamesh status [--watch]`: the fleet from one screen."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from bus.client import Client
from bus.errors import OllameshError
from schemas.fleet import FleetStatus, HostHealth, HostState, ModelsReply, PullProgress

__all__ = ["models", "status", "status_table"]

_STATE_STYLE = {
    HostState.UP: "green",
    HostState.DEGRADED: "yellow",
    HostState.LOADING: "cyan",
    HostState.DOWN: "red",
}


def _size(n: int) -> str:
    return "-" if not n else f"{n / 1e9:.1f} GB"


def _host(health: HostHealth) -> str:
    """The host, its kind when not Ollama, and its engine's busy slots where it says."""
    notes = [] if health.kind == "ollama" else [health.kind]
    if health.slots is not None:
        notes.append(f"{'?' if health.busy is None else health.busy}/{health.slots} slots busy")
    return health.host + (f" [dim]({', '.join(notes)})[/]" if notes else "")


def status_table(fleet: FleetStatus, queued: dict[str, int] | None) -> Table:
    """Hosts x models: state, memory, load, queue, median first token, circuit."""
    table = Table(title=f"ollamesh fleet: {len(fleet.hosts)} hosts", title_justify="left")
    for column in ("host", "state", "model", "loaded", "VRAM", "in flight", "queued",
                   "ttft p50", "circuit"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("host", "model") else "right")
    for health in fleet.hosts:
        state = f"[{_STATE_STYLE[health.state]}]{health.state.value}[/]"
        rows = [r for r in fleet.rows if r.host == health.host]
        if not rows:
            table.add_row(_host(health), state, health.reason or "-", *["-"] * 6)
        for i, row in enumerate(rows):
            queue = "-" if queued is None else str(queued.get(row.model, 0))
            table.add_row(
                _host(health) if i == 0 else "",
                state if i == 0 else "",
                row.model,
                "yes" if row.loaded else "no",
                _size(row.size_vram),
                f"{row.in_flight}/{row.slots}",
                queue,
                "-" if row.ttft_ms_p50 is None else f"{row.ttft_ms_p50:.0f} ms",
                row.circuit,
            )
    return table


async def _queued(client: Client) -> dict[str, int] | None:
    """Waiting requests per model, or None if no router answers."""
    try:
        stats = await client.queues()
    except OllameshError:
        return None
    return {q.model: q.interactive + q.batch for q in stats.models}


async def status(args: argparse.Namespace) -> int:
    """Print the fleet table once, or redraw it every `--interval` seconds with `--watch`."""
    console = Console()
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:

        async def table() -> Table:
            fleet, queued = await asyncio.gather(client.fleet.status(), _queued(client))
            return status_table(fleet, queued)

        if not args.watch:
            console.print(await table())
            return 0
        if not console.is_terminal:  # a pipe or a log: one table after another
            while True:
                console.print(await table())
                await asyncio.sleep(args.interval)
        with Live(await table(), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(args.interval)
                live.update(await table(), refresh=True)


def _pull_bars(console: Console) -> tuple[Progress, Callable[[PullProgress], None]]:
    """A progress bar per host, fed by pull progress events."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
    )
    tasks: dict[str, int] = {}

    def on_progress(event: PullProgress) -> None:
        if event.host not in tasks:
            tasks[event.host] = progress.add_task(event.host, total=None)
        status = event.error.message if event.error else event.status
        progress.update(
            tasks[event.host],
            description=f"{event.host} {status}",
            total=event.total or None,
            completed=event.completed,
        )

    return progress, on_progress


def _report(reply: ModelsReply, console: Console) -> int:
    """Print each host's outcome; exit status 1 if any host failed."""
    failed = 0
    for result in reply.results:
        if result.error is not None:
            failed += 1
            console.print(f"{result.host}: [red]{result.error.code}[/]: {result.error.message}")
            continue
        if reply.verb in ("list", "ps"):
            console.print(f"[bold]{result.host}[/]")
            for m in result.models or []:
                console.print(f"  {m.name:<40} {_size(m.size):>9}  {m.parameter_size}")
            for m in result.loaded or []:
                until = m.expires_at[:19] if m.expires_at else "-"
                console.print(f"  {m.name:<40} {_size(m.size_vram):>9} VRAM  until {until}")
        elif reply.verb == "show":
            console.print_json(json.dumps(result.info))
        else:
            console.print(f"{result.host}: {result.status} in {result.duration_ms:.0f} ms")
    return 1 if failed else 0


def _keep_alive(text: str | None) -> float | str | None:
    """Ollama takes a duration (`10m`) or seconds (`3600`, `-1` forever)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


async def models(args: argparse.Namespace) -> int:
    """`ollamesh models list|show|ps|pull|load|unload|delete|copy`."""
    console = Console()
    model = getattr(args, "model", None)
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        if args.models_command == "pull":
            bars, on_progress = _pull_bars(Console(stderr=True))
            with bars:
                reply = await client.fleet.pull(
                    model, host=args.host, on_progress=on_progress, timeout=args.timeout
                )
        else:
            reply = await client.fleet.models(
                args.models_command,
                model,
                host=args.host,
                keep_alive=_keep_alive(getattr(args, "keep_alive", None)),
                destination=getattr(args, "destination", None),
                timeout=args.timeout,
            )
    return _report(reply, console)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add `models` and `status`; `run` runs the chosen command's coroutine."""
    models_parser = sub.add_parser("models", help="models across the fleet: list, pull, load...")
    verbs = models_parser.add_subparsers(dest="models_command", required=True)
    helps = {
        "list": "models on each host's disk",
        "ps": "models in each host's memory",
        "show": "a model's details (from the first host that has it)",
        "pull": "pull a model onto one host or every host that is up, with progress",
        "load": "load a model into memory (an empty request: no text generated)",
        "unload": "drop a model from memory",
        "delete": "delete a model from disk",
        "copy": "copy a model to a new name, on every host that has it",
    }
    for verb, text in helps.items():
        v = verbs.add_parser(verb, help=text)
        if verb not in ("list", "ps"):
            v.add_argument("model")
        if verb == "copy":
            v.add_argument("destination", help="the new name")
        v.add_argument("--host", help="only this host (its URL); default: every host concerned")
        if verb == "load":
            v.add_argument(
                "--keep-alive",
                help="how long it stays: 10m, 3600, -1 forever (default: 5m, pinned: forever)",
            )
        bus_args(v)
        v.set_defaults(func=run)

    status_parser = sub.add_parser("status", help="hosts x models: state, memory, load, queues")
    status_parser.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    status_parser.add_argument("--interval", type=float, default=2.0, help="seconds per redraw")
    bus_args(status_parser)
    status_parser.set_defaults(func=run)
