"""Analyses (`construction_analyses`: each result as its verb answered it, found again by
id or by its input) and projects (`construction_projects`) in Postgres."""

from __future__ import annotations

import asyncpg

from actors.store.sink import ACQUIRE_TIMEOUT_S
from schemas.construction import AnalysisKind, AnalysisSummary

__all__ = ["AnalysisStore", "ProjectStore", "Stored"]

Stored = tuple[bytes, float]  # the encoded result, when it was made (unix time)


class AnalysisStore:
    """Reads and writes analyses; every call takes one connection from the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(
        self,
        analysis_id: str,
        kind: AnalysisKind,
        project_id: str | None,
        input_hash: str,
        output: bytes,
        *,
        text: str,
        model: str,
        duration_ms: float,
    ) -> float:
        """Store one result; return when it was stored (unix time)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            created = await conn.fetchval(
                "INSERT INTO construction_analyses (analysis_id, kind, project_id, input_hash,"
                " output, text, model, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " RETURNING created_at",
                analysis_id, kind.value, project_id, input_hash, output,
                text.replace("\x00", "\ufffd"), model, duration_ms,
            )  # fmt: skip
        return float(created.timestamp())

    async def latest(self, kind: AnalysisKind, input_hash: str) -> Stored | None:
        """The latest result for this input, if any."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT output, created_at FROM construction_analyses"
                " WHERE kind = $1 AND input_hash = $2 ORDER BY created_at DESC LIMIT 1",
                kind.value, input_hash,
            )  # fmt: skip
        return None if row is None else (bytes(row["output"]), row["created_at"].timestamp())

    async def get(self, analysis_id: str) -> Stored | None:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT output, created_at FROM construction_analyses WHERE analysis_id = $1",
                analysis_id,
            )
        return None if row is None else (bytes(row["output"]), row["created_at"].timestamp())

    async def recent(
        self, kind: AnalysisKind | None, project_id: str | None, limit: int
    ) -> list[AnalysisSummary]:
        """The latest analyses, newest first, of one kind or project if given."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                "SELECT analysis_id, kind, project_id, model, duration_ms, created_at"
                " FROM construction_analyses WHERE ($1::text IS NULL OR kind = $1)"
                " AND ($2::text IS NULL OR project_id = $2) ORDER BY created_at DESC LIMIT $3",
                None if kind is None else kind.value, project_id, limit,
            )  # fmt: skip
        return [
            AnalysisSummary(
                analysis_id=r["analysis_id"],
                kind=AnalysisKind(r["kind"]),
                project_id=r["project_id"],
                model=r["model"],
                duration_ms=r["duration_ms"],
                created_at=r["created_at"].timestamp(),
            )
            for r in rows
        ]


class ProjectStore:
    """Projects in `construction_projects`, each kept as it was put."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(self, project_id: str, name: str, doc: bytes) -> tuple[float, float]:
        """Store a project (a new one, or its new state); return when it was created and
        updated."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "INSERT INTO construction_projects (project_id, name, doc) VALUES ($1, $2, $3)"
                " ON CONFLICT (project_id) DO UPDATE SET name = $2, doc = $3,"
                " updated_at = now() RETURNING created_at, updated_at",
                project_id, name, doc,
            )  # fmt: skip
        return row["created_at"].timestamp(), row["updated_at"].timestamp()

    async def get(self, project_id: str) -> tuple[bytes, float, float] | None:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT doc, created_at, updated_at FROM construction_projects"
                " WHERE project_id = $1",
                project_id,
            )
        if row is None:
            return None
        return bytes(row["doc"]), row["created_at"].timestamp(), row["updated_at"].timestamp()

    async def recent(self, limit: int) -> list[tuple[bytes, float, float]]:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                "SELECT doc, created_at, updated_at FROM construction_projects"
                " ORDER BY updated_at DESC LIMIT $1",
                limit,
            )
        return [(bytes(r["doc"]), r["created_at"].timestamp(), r["updated_at"].timestamp())
                for r in rows]  # fmt: skip
