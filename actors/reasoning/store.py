"""Chains and their steps in Postgres (`reasoning_chains`, `reasoning_steps`), written as a
chain goes so that another coordinator can take it over where it stopped."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from actors.reasoning.plan import Plan, PlanStep
from actors.store.sink import ACQUIRE_TIMEOUT_S
from schemas.reasoning import (
    Chain,
    ChainState,
    ChainSummary,
    StepKind,
    StepResult,
    StepState,
)
from schemas.requests import Language

__all__ = ["ChainStore", "plan_of"]


def _storable(text: str | None) -> str | None:
    """Text Postgres takes: it refuses NUL in a text column (a model may write one)."""
    return None if text is None else text.replace("\x00", "\ufffd")


def _at(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ChainStore:
    """Reads and writes chains; every call takes one connection from the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, chain_id: str, query: str, language: Language) -> bool:
        """Record a new chain; False if one with that id exists (a request sent again)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            status = await conn.execute(
                "INSERT INTO reasoning_chains (chain_id, query, language, state)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (chain_id) DO NOTHING",
                chain_id, _storable(query), language, ChainState.RUNNING.value,
            )  # fmt: skip
        return status.endswith(" 1")

    async def plan(self, chain_id: str, plan: Plan) -> None:
        """Store the chain's steps (planned) and the plan's warnings, once."""
        rows = [
            (chain_id, s.step_id, i, _storable(s.text), msgspec.json.encode(s.depends_on).decode(),
             s.kind.value, StepState.PLANNED.value)
            for i, s in enumerate(plan.steps)
        ]  # fmt: skip
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO reasoning_steps (chain_id, step_id, position, text, depends_on,"
                " kind, state) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)"
                " ON CONFLICT (chain_id, step_id) DO NOTHING",
                rows,
            )
            await conn.execute(
                "UPDATE reasoning_chains SET warnings = $2::jsonb WHERE chain_id = $1",
                chain_id, msgspec.json.encode(plan.warnings).decode(),
            )  # fmt: skip

    async def step(self, chain_id: str, step: StepResult) -> None:
        """Record a step's new state (started, done or failed) and what it gave."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.execute(
                "UPDATE reasoning_steps SET state = $3, model = $4, host = $5, answer = $6,"
                " error = $7, prompt_tokens = $8, output_tokens = $9,"
                " started_at = coalesce(started_at, $10), finished_at = $11"
                " WHERE chain_id = $1 AND step_id = $2",
                chain_id, step.step_id, step.state.value, step.model, step.host,
                _storable(step.answer), _storable(step.error), step.prompt_tokens,
                step.output_tokens, _when(step.started_at), _when(step.finished_at),
            )  # fmt: skip

    async def finish(
        self,
        chain_id: str,
        state: ChainState,
        answer: str | None,
        error: str | None,
        ending: bytes,
    ) -> None:
        """Record how the chain ended, and the message that ends its stream."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.execute(
                "UPDATE reasoning_chains SET state = $2, answer = $3, error = $4,"
                " finished_at = $5, ending = $6 WHERE chain_id = $1",
                chain_id, state.value, _storable(answer), _storable(error), _now(), ending,
            )  # fmt: skip

    async def ending(self, chain_id: str) -> bytes | None:
        """The message that ends the chain's stream, once the chain has ended."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            value: bytes | None = await conn.fetchval(
                "SELECT ending FROM reasoning_chains WHERE chain_id = $1", chain_id
            )
        return value

    async def own(self, chain_id: str, owner: str) -> None:
        """Note that `owner` runs the chain, now (its heartbeat)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.execute(
                "UPDATE reasoning_chains SET owner = $2, heartbeat_at = $3 WHERE chain_id = $1",
                chain_id, owner, _now(),
            )  # fmt: skip

    async def owner(self, chain_id: str) -> tuple[str | None, float | None]:
        """Who last said it runs the chain, and when."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT owner, heartbeat_at FROM reasoning_chains WHERE chain_id = $1", chain_id
            )
        if row is None:
            return None, None
        return row["owner"], _at(row["heartbeat_at"])

    async def get(self, chain_id: str) -> Chain | None:
        """The chain and its steps, in plan order; None if there is no such chain."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT * FROM reasoning_chains WHERE chain_id = $1", chain_id
            )
            if row is None:
                return None
            steps = await conn.fetch(
                "SELECT * FROM reasoning_steps WHERE chain_id = $1 ORDER BY position", chain_id
            )
        return Chain(
            chain_id=row["chain_id"],
            query=row["query"],
            state=ChainState(row["state"]),
            language=row["language"],
            steps=[_step(s) for s in steps],
            warnings=msgspec.json.decode(row["warnings"]),
            answer=row["answer"],
            error=row["error"],
            created_at=row["created_at"].timestamp(),
            finished_at=_at(row["finished_at"]),
        )

    async def recent(self, limit: int) -> list[ChainSummary]:
        """The latest chains, newest first."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                "SELECT c.chain_id, c.query, c.state, c.created_at, c.finished_at,"
                " (SELECT count(*) FROM reasoning_steps s WHERE s.chain_id = c.chain_id)"
                " AS steps FROM reasoning_chains c ORDER BY c.created_at DESC LIMIT $1",
                limit,
            )
        return [
            ChainSummary(
                chain_id=r["chain_id"],
                query=r["query"],
                state=ChainState(r["state"]),
                steps=r["steps"],
                created_at=r["created_at"].timestamp(),
                finished_at=_at(r["finished_at"]),
            )
            for r in rows
        ]


def _when(at: float | None) -> dt.datetime | None:
    return None if at is None else dt.datetime.fromtimestamp(at, dt.UTC)


def _step(row: asyncpg.Record) -> StepResult:
    return StepResult(
        step_id=row["step_id"],
        text=row["text"],
        depends_on=msgspec.json.decode(row["depends_on"]),
        kind=StepKind(row["kind"]),
        state=StepState(row["state"]),
        model=row["model"],
        host=row["host"],
        answer=row["answer"],
        error=row["error"],
        prompt_tokens=row["prompt_tokens"],
        output_tokens=row["output_tokens"],
        started_at=_at(row["started_at"]),
        finished_at=_at(row["finished_at"]),
    )


def plan_of(chain: Chain) -> list[PlanStep]:
    """A stored chain's plan, as it was made."""
    return [PlanStep(s.step_id, s.text, list(s.depends_on), s.kind) for s in chain.steps]
