"""The prompt store: versioned templates in Postgres, rendered without surprises.

`<prefix>.v1.prompts.{put,get,list,delete,render}` (request/reply). Each put stores a
new version; get returns the latest or a named one. Rendering replaces `{{name}}` (spaces
inside the braces allowed) in one pass over the template: a value is never scanned
again, so a value holding `{{x}}` or `$1` stays as it is; text that is not a placeholder
stays literal; every missing variable is named in one error; unused ones are reported.
Usage figures (uses, success rate, average latency) come from `ollama_performance`,
where the recorder writes each request's template. The original service's three
construction templates are seeded on first start.

While Postgres is unreachable, a render is answered from the templates this store last
read or wrote (all the latest ones at start): a request naming a template is served
through an outage, with the latest version this store knew. Everything else (and a
template it never read) is `unavailable` until the database is back.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.store.sink import ACQUIRE_TIMEOUT_S, DOWN, unreachable_as
from bus.actor import Actor
from bus.config import Config
from bus.errors import BadRequest
from bus.rpc import decode_body
from bus.subjects import Subjects
from schemas import encode
from schemas.templates import (
    Prompt,
    PromptDeleted,
    PromptList,
    PromptPut,
    PromptRef,
    PromptRender,
    Prompts,
    Rendered,
    TemplateUsage,
)

__all__ = ["SEEDS", "MissingVariables", "PromptStore", "render", "variables_of"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class MissingVariables(BadRequest):
    """A render lacked values for some of the template's variables."""


def variables_of(template: str) -> list[str]:
    """The variable names `template` uses, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(template)))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: str, variables: Mapping[str, object]) -> tuple[str, list[str]]:
    """Fill `template`; return the text and the unused variable names (sorted)."""
    used = variables_of(template)
    if missing := [name for name in used if name not in variables]:
        raise MissingVariables(f"missing template variables: {', '.join(missing)}")
    # A function as replacement: values are inserted as they are, never re-scanned or
    # read as group references.
    text = _PLACEHOLDER.sub(lambda m: _text(variables[m[1]]), template)
    return text, sorted(set(variables) - set(used))


SEEDS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "hoai_analysis_template",
        """Analyze the following construction project for HOAI Phase {{phase}} compliance:

Project Type: {{projectType}}
Budget: {{budget}} EUR
Area: {{area}} m²

Provide detailed analysis including:
1. Required deliverables for this phase
2. Fee calculation based on HOAI tables
3. Timeline recommendations
4. Compliance checkpoints
5. Potential risks or issues""",
        {"temperature": 0.3},
    ),
    (
        "safety_check_template",
        """Perform safety analysis for construction site:

Conditions: {{conditions}}
Workers on site: {{workers}}
Equipment in use: {{equipment}}
Known hazards: {{hazards}}

Identify:
RISKS:
- List all potential safety risks

MEASURES:
- Provide specific safety measures for each risk
- Include PPE requirements
- Emergency procedures""",
        {"temperature": 0.2},
    ),
    (
        "quantity_survey_template",
        """Calculate material quantities for:

Project specifications: {{specifications}}

Provide:
1. Detailed material list with quantities
2. Waste allowances
3. Cost estimates
4. Delivery schedule recommendations""",
        {"temperature": 0.4},
    ),
)

_INSERT = """
INSERT INTO ollama_prompts (name, version, template, parameters, description)
SELECT $1, coalesce(max(version), 0) + 1, $2, $3::jsonb, $4
FROM ollama_prompts WHERE name = $1
RETURNING version
"""
_SEED = """
INSERT INTO ollama_prompts (name, version, template, parameters, description)
SELECT $1, 1, $2, $3::jsonb, 'seeded: a template of the original service'
WHERE NOT EXISTS (SELECT 1 FROM ollama_prompts WHERE name = $1)
"""
_COLUMNS = "name, version, template, parameters::text AS parameters, description, created_at"
_LATEST = f"SELECT {_COLUMNS} FROM ollama_prompts WHERE name = $1 ORDER BY version DESC LIMIT 1"
_VERSION = f"SELECT {_COLUMNS} FROM ollama_prompts WHERE name = $1 AND version = $2"
_ALL_LATEST = f"""
SELECT DISTINCT ON (name) {_COLUMNS} FROM ollama_prompts ORDER BY name, version DESC
"""
_USAGE = """
SELECT template, count(*)::int AS uses, avg((outcome = 'ok')::int)::float8 AS success_rate,
    avg(latency_ms)::float8 AS avg_latency_ms
FROM ollama_performance WHERE template = ANY($1::text[]) GROUP BY template
"""

Handler = Callable[[Msg], Awaitable[bytes]]


class PromptStore(Actor):
    """Stores, versions and renders prompt templates."""

    name = "prompts"

    def __init__(self, nc: NATS, subjects: Subjects, config: Config, pool: asyncpg.Pool) -> None:
        super().__init__(nc, subjects)
        self.pool = pool
        # By (name, version), and by (name, None) the latest known: what renders use
        # while the database is unreachable.
        self._known: dict[tuple[str, int | None], asyncpg.Record] = {}

    async def setup(self) -> None:
        await self.seed()
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            for record in await conn.fetch(_ALL_LATEST):
                self._remember(record, latest=True)
        handlers: dict[str, Handler] = {
            "put": self._put,
            "get": self._get,
            "list": self._list,
            "delete": self._delete,
            "render": self._render,
        }
        for verb, handler in handlers.items():
            subject = self.subjects.prompts(verb)
            await self.serve(subject, partial(self._guarded, handler), queue="prompts")

    async def _guarded(self, handler: Handler, msg: Msg) -> bytes:
        with unreachable_as("the prompt store's database"):
            return await handler(msg)

    async def seed(self) -> None:
        """Store the original service's templates, unless a template of that name exists."""
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            for name, template, parameters in SEEDS:
                await conn.execute(_SEED, name, template, encode(parameters).decode())

    async def _put(self, msg: Msg) -> bytes:
        put = decode_body(PromptPut, msg.data, PromptPut.__name__)
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            # One writer per name at a time, so versions never collide.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", put.name)
            parameters = encode(put.parameters).decode()
            await conn.fetchval(_INSERT, put.name, put.template, parameters, put.description)
            record = await conn.fetchrow(_LATEST, put.name)
        self._remember(record, latest=True)
        self.log.info("prompt_stored", name=put.name, version=record["version"])
        return encode(await self._prompt(record))

    async def _get(self, msg: Msg) -> bytes:
        ref = decode_body(PromptRef, msg.data, PromptRef.__name__)
        return encode(await self._prompt(await self._find(ref.name, ref.version)))

    async def _list(self, msg: Msg) -> bytes:
        decode_body(PromptList, msg.data, PromptList.__name__)
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            records = await conn.fetch(_ALL_LATEST)
        for record in records:
            self._remember(record, latest=True)
        usage = await self._usage([r["name"] for r in records])
        return encode(Prompts(prompts=[self._shape(r, usage) for r in records]))

    async def _delete(self, msg: Msg) -> bytes:
        ref = decode_body(PromptRef, msg.data, PromptRef.__name__)
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            if ref.version is None:
                status = await conn.execute("DELETE FROM ollama_prompts WHERE name = $1", ref.name)
            else:
                status = await conn.execute(
                    "DELETE FROM ollama_prompts WHERE name = $1 AND version = $2",
                    ref.name,
                    ref.version,
                )
        removed = int(status.split()[-1])
        # Read again when next asked (the latest may be another version now).
        for key in [key for key in self._known if key[0] == ref.name]:
            del self._known[key]
        if not removed:
            raise BadRequest(_not_found(ref.name, ref.version))
        self.log.info("prompt_deleted", name=ref.name, version=ref.version, versions=removed)
        return encode(PromptDeleted(name=ref.name, versions=removed))

    async def _render(self, msg: Msg) -> bytes:
        request = decode_body(PromptRender, msg.data, PromptRender.__name__)
        try:
            record = await self._find(request.name, request.version)
        except DOWN:
            known = self._known.get((request.name, request.version))
            if known is None:
                raise
            record = known
            self.log.info(
                "prompt_rendered_from_memory", name=request.name, version=record["version"]
            )
        text, unused = render(record["template"], request.variables)
        return encode(
            Rendered(
                name=record["name"],
                version=record["version"],
                text=text,
                parameters=msgspec.json.decode(record["parameters"]),
                unused=unused,
            )
        )

    async def _find(self, name: str, version: int | None) -> asyncpg.Record:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            if version is None:
                record = await conn.fetchrow(_LATEST, name)
            else:
                record = await conn.fetchrow(_VERSION, name, version)
        if record is None:
            raise BadRequest(_not_found(name, version))
        self._remember(record, latest=version is None)
        return record

    def _remember(self, record: asyncpg.Record, *, latest: bool) -> None:
        self._known[(record["name"], record["version"])] = record
        if latest:
            self._known[(record["name"], None)] = record

    async def _usage(self, names: list[str]) -> dict[str, TemplateUsage]:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            records = await conn.fetch(_USAGE, names)
        return {
            r["template"]: TemplateUsage(
                uses=r["uses"],
                success_rate=r["success_rate"],
                avg_latency_ms=r["avg_latency_ms"],
            )
            for r in records
        }

    async def _prompt(self, record: asyncpg.Record) -> Prompt:
        return self._shape(record, await self._usage([record["name"]]))

    @staticmethod
    def _shape(record: asyncpg.Record, usage: Mapping[str, TemplateUsage]) -> Prompt:
        created: dt.datetime = record["created_at"]
        return Prompt(
            name=record["name"],
            version=record["version"],
            template=record["template"],
            parameters=msgspec.json.decode(record["parameters"]),
            description=record["description"],
            created_at=created.timestamp(),
            variables=variables_of(record["template"]),
            usage=usage.get(record["name"], TemplateUsage()),
        )


def _not_found(name: str, version: int | None) -> str:
    which = f" version {version}" if version is not None else ""
    return f"no prompt template named {name!r}{which}"
