"""Running one chain: plan it, solve its steps as a graph (every step whose dependencies
are done at once), synthesise the answer, and stop it all on cancel or deadline.

Every model call goes through the public subjects like any client's, so routing, limits,
priorities, cache, stats and fallbacks apply. Each call's request id is made from the
chain's id and what the call is (`-plan`, `-s<position>`, `-syn`): a coordinator taking
over a chain follows a call already under way (its stream is stored) instead of making
it again, and a call sent again while still queued is the same request to the router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.js.errors import NotFoundError

from actors.reasoning.plan import (
    CHARS_PER_TOKEN,
    Plan,
    PlanStep,
    fit,
    plan_schema,
    read_plan,
    ready,
)
from actors.reasoning.store import ChainStore, plan_of
from actors.reasoning.templates import results_text, template_name
from actors.reasoning.writer import ChainWriter
from bus.client import Client
from bus.errors import OllameshError
from bus.stream import ChunkStream
from schemas import Done, Options
from schemas.reasoning import (
    Chain,
    ReasonRequest,
    ReasonRoles,
    Step,
    StepKind,
    StepResult,
    StepState,
)

__all__ = ["ChainRun", "Roles"]

# What a synthesis or step prompt must leave of the context for its answer, at least.
_ANSWER_TOKENS = 1024
# Room for a template's own words, beside what fills it.
_TEMPLATE_TOKENS = 200
# Room for the words around one step's result ("Step 3: ...", "Result: "), in characters.
_LABEL_CHARS = 24


@dataclass(frozen=True)
class Roles:
    """The role (or model) each part of a chain goes to."""

    decompose: str
    solve: str
    synthesise: str
    # Where `mathematical` steps go; None: to `solve`, like the others.
    mathematical: str | None

    def asked(self, roles: ReasonRoles | None) -> Roles:
        """These roles, with those a request names instead."""
        if roles is None:
            return self
        return Roles(
            decompose=roles.decompose or self.decompose,
            solve=roles.solve or self.solve,
            synthesise=roles.synthesise or self.synthesise,
            mathematical=self.mathematical,
        )

    def of(self, kind: StepKind) -> str:
        """The role (or model) that solves a step of `kind`."""
        if kind is StepKind.MATHEMATICAL and self.mathematical is not None:
            return self.mathematical
        return self.solve


@dataclass
class _Used:
    """Tokens every call of the chain used so far."""

    prompt: int = 0
    output: int = 0

    def add(self, done: Done | None) -> None:
        if done is not None:
            self.prompt += done.prompt_eval_count
            self.output += done.eval_count


class ChainRun:
    """One chain, from its stored state to its `done` (or a typed error)."""

    def __init__(
        self,
        client: Client,
        store: ChainStore,
        writer: ChainWriter,
        request: ReasonRequest,
        roles: Roles,
        *,
        chain_id: str,
        context_tokens: int,
        deadline_at: float | None,
        resumed: bool,
    ) -> None:
        self._client = client
        self._store = store
        self._writer = writer
        self._request = request
        self._roles = roles.asked(request.roles)
        self.chain_id = chain_id
        self._context_tokens = (request.options and request.options.num_ctx) or context_tokens
        self._deadline_at = deadline_at
        # Run before (by a coordinator since gone): its calls may have been made.
        self._resumed = resumed
        self._used = _Used()
        self._log = structlog.get_logger("actors.reasoning").bind(chain_id=chain_id)
        # Calls under way, by request id: cancelled on the fleet if the chain stops.
        self.calls: set[str] = set()
        # Steps' ends being recorded (the chain waits for them before its synthesis).
        self._writes: list[asyncio.Task[None]] = []

    async def run(self, chain: Chain) -> Done:
        """Finish `chain` from where its stored state says it is; return its `done` (the
        caller sends it, then stores the chain's end)."""
        started = time.time()
        plan = Plan(plan_of(chain), list(chain.warnings)) if chain.steps else await self._plan()
        results = {s.step_id: s for s in chain.steps}
        await self._solve(plan, results)
        answer, last = await self._synthesise(plan, results)
        steps = [results[s.step_id] for s in plan.steps]
        return Done(
            request_id=self.chain_id,
            chain_id=self.chain_id,
            model=last.model if last else "",
            host=last.host if last else "",
            answer=answer,
            steps=steps,
            prompt_eval_count=self._used.prompt,
            eval_count=self._used.output,
            total_duration=int((time.time() - started) * 1e9),
        )

    # -- the plan --------------------------------------------------------------------------

    async def _plan(self) -> Plan:
        req = self._request
        variables = {"query": req.query, "max_steps": req.max_steps}
        stream = await self._call(
            "plan", self._roles.decompose, "reasoning_decompose", variables,
            format=plan_schema(req.max_steps),
        )  # fmt: skip
        answer = await stream.text()
        self._used.add(stream.done)
        plan = read_plan(answer, req.query, req.max_steps)
        for warning in plan.warnings:
            self._log.warning("plan_corrected", warning=warning)
        await self._store.plan(self.chain_id, plan)
        return plan

    # -- the steps ---------------------------------------------------------------------------

    async def _solve(self, plan: Plan, results: dict[str, StepResult]) -> None:
        """Solve every step not done, each as soon as what it needs is done."""
        done = {i for i, r in results.items() if r.state is StepState.DONE}
        running: dict[asyncio.Task[StepResult], PlanStep] = {}
        try:
            while len(done) < len(plan.steps):
                started = done | {s.step_id for s in running.values()}
                for step in ready(plan.steps, done, started):
                    position = plan.steps.index(step)
                    task = asyncio.create_task(self._step(step, position, results))
                    running[task] = step
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    step = running.pop(task)
                    results[step.step_id] = task.result()  # a failure stops the chain here
                    done.add(step.step_id)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)
            await self._recorded()

    async def _step(
        self, step: PlanStep, position: int, results: dict[str, StepResult]
    ) -> StepResult:
        stored = results.get(step.step_id)
        result = StepResult(
            step_id=step.step_id, text=step.text, depends_on=step.depends_on, kind=step.kind,
            state=StepState.STARTED,
            started_at=stored.started_at if stored and stored.started_at else time.time(),
        )  # fmt: skip
        # The step's start is recorded while its call goes out: the call need not wait.
        recording = asyncio.create_task(self._record(result))
        role = self._roles.of(step.kind)
        context = self._results([results[d] for d in step.depends_on], beside=step.text)
        variables = {"query": self._request.query, "step": step.text, "context": context}
        try:
            stream = await self._call(f"s{position}", role, "reasoning_step", variables)
            answer = await stream.text()
        except OllameshError as exc:
            await recording
            failed = msgspec.structs.replace(
                result, state=StepState.FAILED, error=f"{exc.code}: {exc.message}",
                finished_at=time.time(),
            )  # fmt: skip
            await self._record(failed)
            raise type(exc)(
                f"step {step.step_id} ({step.text[:80]!r}) failed: {exc.message}",
                retryable=exc.retryable,
                request_id=self.chain_id,
            ) from exc
        finally:
            await recording  # also when cancelled: no write outlives the step
        self._used.add(stream.done)
        d = stream.done
        result = msgspec.structs.replace(
            result, state=StepState.DONE, answer=answer, finished_at=time.time(),
            model=d.model if d else "", host=d.host if d else "",
            prompt_tokens=d.prompt_eval_count if d else 0, output_tokens=d.eval_count if d else 0,
        )  # fmt: skip
        # Recorded on the side: the steps that need this one start at once (its record
        # still goes onto the stream before their starts, the writer keeping the order).
        self._writes.append(asyncio.create_task(self._record(result)))
        return result

    async def _recorded(self) -> None:
        """Wait for every step's record; raise if one failed."""
        if self._writes:
            await asyncio.wait(self._writes)
        for task in self._writes:
            task.result()

    async def _record(self, result: StepResult) -> None:
        """A step's new state, stored and sent onto the chain's stream at the same time."""
        await asyncio.gather(
            self._store.step(self.chain_id, result), self._writer.step(self._event(result))
        )

    def _results(self, steps: list[StepResult], beside: str = "") -> str:
        """`steps` with their answers, fitted together into what a prompt holding the
        query, the steps' texts and `beside` leaves of the context."""
        fixed = len(self._request.query) + len(beside)
        fixed += sum(len(r.text) + _LABEL_CHARS for r in steps)
        answers = fit([r.answer or "" for r in steps], self._budget(fixed))
        return results_text(
            self._request.language,
            [(r.step_id, r.text, a) for r, a in zip(steps, answers, strict=True)],
        )

    def _budget(self, fixed_chars: int) -> int:
        """Tokens left for answers in a prompt that also holds `fixed_chars` of other text,
        the template's words and room for the answer it asks for."""
        asked = self._request.options and self._request.options.num_predict
        reserve = asked if asked and asked > 0 else _ANSWER_TOKENS
        fixed = -(-fixed_chars // CHARS_PER_TOKEN)
        return self._context_tokens - reserve - _TEMPLATE_TOKENS - fixed

    def _event(self, result: StepResult) -> Step:
        return Step(
            request_id=self.chain_id, step_id=result.step_id, text=result.text,
            depends_on=result.depends_on, kind=result.kind, state=result.state,
            model=result.model, host=result.host, answer=result.answer, error=result.error,
            at=time.time(),
        )  # fmt: skip

    # -- the answer --------------------------------------------------------------------------

    async def _synthesise(
        self, plan: Plan, results: dict[str, StepResult]
    ) -> tuple[str, Done | None]:
        """The synthesis, relayed chunk by chunk onto the chain's stream."""
        steps = self._results([results[s.step_id] for s in plan.steps])
        variables = {"query": self._request.query, "steps": steps}
        stream = await self._call("syn", self._roles.synthesise, "reasoning_synthesise", variables)
        parts: list[str] = []
        relayed = self._writer.relayed  # chunks a coordinator before this one relayed
        async for chunk in stream:
            parts.append(chunk.text)
            if relayed:
                relayed -= 1
                continue
            await self._writer.chunk(chunk)
        self._used.add(stream.done)
        return "".join(parts), stream.done

    # -- calls --------------------------------------------------------------------------------

    async def _call(
        self, part: str, role: str, template: str, variables: dict[str, Any], **fields: Any
    ) -> ChunkStream:
        """One streamed call of the chain: followed if a coordinator before this one made
        it (its stream is stored), made otherwise."""
        rid = f"{self.chain_id}-{part}"
        self.calls.add(rid)
        if self._resumed and await self._made(rid):
            return await self._client.resume(rid)
        req = self._request
        return await self._client.generate(
            role,
            stream=True,
            request_id=rid,
            prompt_template=template_name(template, req.language),
            variables=variables,
            options=req.options or Options(),
            priority=req.priority,
            deadline_ms=self._left_ms(),
            **fields,
        )

    async def _made(self, request_id: str) -> bool:
        """Whether the call's stream has anything stored (it was made before)."""
        subjects = self._client.subjects
        try:
            await self._client.nc.jetstream().get_last_msg(
                subjects.chunk_stream, subjects.stream(request_id)
            )
        except NotFoundError:
            return False
        return True

    def _left_ms(self) -> int | None:
        if self._deadline_at is None:
            return None
        return max(1, int((self._deadline_at - time.time()) * 1000))

    async def cancel_calls(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Ask the fleet to stop every call the chain made (`send`: a cancel)."""
        for rid in self.calls:
            await send(rid)
