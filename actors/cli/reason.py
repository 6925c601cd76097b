"""`ollamesh reason` and `ollamesh chains`: a reasoning chain drawn live, stored chains."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from actors.cli.terminal import cancel_on_the_way_out
from bus.client import ChainStream, Client
from schemas import Chunk, Done
from schemas.reasoning import LANGUAGES, Chain, Step, StepResult, StepState

__all__ = ["register"]

_EXCERPT = 70
_STYLE = {StepState.STARTED: "yellow", StepState.DONE: "green", StepState.FAILED: "red"}


def _excerpt(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= _EXCERPT else flat[: _EXCERPT - 1] + "…"


def _steps_table(steps: list[Step]) -> Table:
    """One row per step: its id, what it needs, its state, who answered, what it gave."""
    table = Table(title="steps", title_justify="left", expand=False)
    for column in ("step", "needs", "kind", "state", "model @ host", "task / answer"):
        table.add_column(column, overflow="fold")
    for s in steps:
        who = f"{s.model} @ {s.host}" if s.model else ""
        said = s.error if s.state is StepState.FAILED else (s.answer or s.text)
        state = f"[{_STYLE.get(s.state, '')}]{s.state.value}[/]"
        needs = ",".join(s.depends_on) or "-"
        table.add_row(s.step_id, needs, s.kind.value, state, who, _excerpt(said))
    return table


def _step_line(step: Step) -> str:
    """A step's change as one line (the output is no terminal)."""
    said = step.error if step.state is StepState.FAILED else (step.answer or step.text)
    who = f" ({step.model} on {step.host})" if step.model else ""
    return f"step {step.step_id} {step.state.value}{who}: {_excerpt(said)}"


def _figures(done: Done | None) -> str:
    if done is None:
        return ""
    seconds = done.total_duration / 1e9
    return (
        f"[chain {done.chain_id}: {len(done.steps or [])} steps, "
        f"{done.prompt_eval_count} prompt + {done.eval_count} output tokens, {seconds:.1f} s]"
    )


class _Steps:
    """The steps seen so far, redrawn in a live table (or printed line by line)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._steps: dict[str, Step] = {}
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(_steps_table([]), console=console, auto_refresh=False)
            self._live.start()

    def show(self, step: Step) -> None:
        self._steps[step.step_id] = step
        if self._live is None:
            self._console.print(_step_line(step), highlight=False, markup=False, soft_wrap=True)
        else:
            self._live.update(_steps_table(list(self._steps.values())), refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


async def _follow(stream: ChainStream, console: Console) -> None:
    """Draw the steps as they change, then print the answer as it arrives."""
    steps = _Steps(console)
    answering = False
    try:
        async for event in stream:
            if isinstance(event, Step):
                steps.show(event)
                continue
            if not answering:
                steps.close()
                answering = True
            assert isinstance(event, Chunk)
            sys.stdout.write(event.text)
            sys.stdout.flush()
    except asyncio.CancelledError:  # Ctrl-C: stop the chain's steps on the fleet
        await cancel_on_the_way_out(stream)
        raise
    finally:
        steps.close()
    sys.stdout.write("\n")
    console.print(_figures(stream.done), highlight=False, markup=False, soft_wrap=True)


async def reason(args: argparse.Namespace) -> int:
    """Answer a query through a chain of steps, drawn as they run."""
    options = {"num_predict": args.num_predict} if args.num_predict is not None else None
    deadline_ms = int(args.deadline * 1000) if args.deadline else None
    console = Console(stderr=True)
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        started = await client.reason(
            args.query, stream=not args.no_stream, max_steps=args.max_steps,
            language=args.language, options=options, deadline_ms=deadline_ms,
            priority=args.priority,
        )  # fmt: skip
        if isinstance(started, ChainStream):
            await _follow(started, console)
        else:
            console.print(_steps_table([_as_step(started.chain_id, s) for s in started.steps]))
            print(started.answer)
    return 0


def _as_step(chain_id: str, s: StepResult) -> Step:
    """A stored step shown as the step message that last changed it."""
    return Step(
        request_id=chain_id, step_id=s.step_id, text=s.text, depends_on=s.depends_on,
        kind=s.kind, state=s.state, model=s.model, host=s.host, answer=s.answer, error=s.error,
    )  # fmt: skip


def _chain(chain: Chain, console: Console) -> None:
    console.print(
        f"chain {chain.chain_id} ({chain.state.value}): {chain.query}", markup=False, soft_wrap=True
    )
    for warning in chain.warnings:
        console.print(f"warning: {warning}", markup=False, soft_wrap=True)
    console.print(_steps_table([_as_step(chain.chain_id, s) for s in chain.steps]))
    if chain.answer is not None:
        print(chain.answer)
    if chain.error is not None:
        console.print(f"error: {chain.error}", markup=False, soft_wrap=True)


async def chains(args: argparse.Namespace) -> int:
    """The latest chains, or one chain with its steps and answer."""
    console = Console()
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        if args.chain_id:
            _chain(await client.get_chain(args.chain_id), console)
            return 0
        table = Table(title="chains", title_justify="left")
        for column in ("chain", "state", "steps", "created"):
            table.add_column(column, no_wrap=True)
        table.add_column("query", overflow="fold")
        for c in await client.list_chains(args.limit):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created_at))
            table.add_row(c.chain_id, c.state.value, str(c.steps), created, _excerpt(c.query))
        console.print(table)
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add `reason` and `chains`; `run` runs the chosen command's coroutine."""
    p = sub.add_parser("reason", help="answer QUERY through a chain of steps, drawn live")
    p.add_argument("query")
    p.add_argument("--max-steps", type=int, default=8, help="at most this many steps (1-32)")
    p.add_argument("--language", choices=LANGUAGES, default="en", help="the templates' language")
    p.add_argument("--deadline", type=float, help="seconds the whole chain may take")
    p.add_argument("--num-predict", type=int, dest="num_predict", help="tokens per answer")
    p.add_argument("--priority", choices=["interactive", "batch"], default="interactive")
    p.add_argument("--no-stream", action="store_true", help="print the whole result at the end")
    bus_args(p)
    p.set_defaults(func=run)

    c = sub.add_parser("chains", help="the latest reasoning chains, or one with its steps")
    c.add_argument("chain_id", nargs="?", help="show this chain (default: list the latest)")
    c.add_argument("--limit", type=int, default=20)
    bus_args(c)
    c.set_defaults(func=run)
