"""The event sink: what a failed write means, dead letters, crashed loops restarted."""

from __future__ import annotations

import time
from collections import Counter

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
import pytest
import structlog
from nats.aio.msg import Msg

from actors.recorder import Recorder
from actors.store import open_pool
from actors.store.failures import Verdict, reason, verdict
from actors.store.sink import unreachable_as
from bus.connection import NATS, connect
from bus.errors import Unavailable
from bus.provision import provision
from bus.server import EmbeddedNats
from bus.subjects import Subjects, model_token
from schemas import Kind, encode
from schemas.internal import Answer, CacheStore, RequestEvent
from tests.conftest import StackFactory, make_config
from tests.helpers import eventually, query

# No executor runs in these stacks: the host is never asked.
HOSTS = ["http://127.0.0.1:9"]


# A query on a connection the server has just ended, before its socket closed (seen as
# pg_terminate_backend ended a prompt store's connections; a stopping Postgres ends
# them the same way).
ENDED = asyncpg.InternalClientError(
    "cannot switch to state 12; another operation (2) is in progress"
)
VERDICTS = [
    (asyncpg.CharacterNotInRepertoireError("0x00"), Verdict.REFUSED),
    (asyncpg.NumericValueOutOfRangeError("out of range"), Verdict.REFUSED),
    (asyncpg.NotNullViolationError("null"), Verdict.REFUSED),
    (asyncpg.DataError("invalid input for query argument $10"), Verdict.REFUSED),
    (msgspec.DecodeError("JSON is malformed"), Verdict.REFUSED),
    (nats.js.errors.InvalidKeyError("a b"), Verdict.REFUSED),
    (ConnectionRefusedError(111, "refused"), Verdict.OUTAGE),
    (TimeoutError(), Verdict.OUTAGE),
    (nats.errors.TimeoutError(), Verdict.OUTAGE),
    (asyncpg.InterfaceError("pool is closing"), Verdict.OUTAGE),
    (asyncpg.ConnectionDoesNotExistError("closed"), Verdict.OUTAGE),
    (ENDED, Verdict.OUTAGE),
    (asyncpg.TooManyConnectionsError("too many"), Verdict.OUTAGE),
    (asyncpg.CannotConnectNowError("starting up"), Verdict.OUTAGE),
    (asyncpg.AdminShutdownError("shutting down"), Verdict.OUTAGE),
    (asyncpg.DiskFullError("disk full"), Verdict.OUTAGE),
    (asyncpg.SerializationError("serialize"), Verdict.OUTAGE),
    (asyncpg.UndefinedTableError("no table"), Verdict.FAULT),
    (asyncpg.InsufficientPrivilegeError("denied"), Verdict.FAULT),
    (RuntimeError("a bug"), Verdict.FAULT),
]


@pytest.mark.parametrize(
    ("exc", "want"),
    VERDICTS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_a_failed_write_is_an_outage_a_refused_row_or_a_fault(
    exc: BaseException, want: Verdict
) -> None:
    """Only connection-level failures wait; content the store refuses is set aside; the
    rest (a missing table, a bug) is neither."""
    assert verdict(exc) is want


@pytest.mark.parametrize(
    "exc", [exc for exc, want in VERDICTS if want is Verdict.OUTAGE], ids=lambda v: type(v).__name__
)
def test_an_outage_under_a_request_is_unavailable(exc: BaseException) -> None:
    """What the sink waits out, a request answered from Postgres gets as `unavailable`
    (retryable), never `internal`."""
    with (
        pytest.raises(Unavailable, match="the test database is unreachable"),
        unreachable_as("the test database"),
    ):
        raise exc


def test_a_reason_names_the_sqlstate_and_can_be_stored() -> None:
    """A reason says the error and its SQLSTATE on one line, with no NUL Postgres would refuse."""
    why = reason(asyncpg.CharacterNotInRepertoireError('bad "\x00"\nhere'))
    assert why.startswith("CharacterNotInRepertoireError [22021]: ")
    assert "\x00" not in why and "\n" not in why


async def dead_letters(url: str) -> list[asyncpg.Record]:
    """Every row of dead_letters, oldest first."""
    return await query(url, "SELECT * FROM dead_letters ORDER BY stream_seq")


async def rows(url: str, sql: str) -> int:
    [row] = await query(url, sql)
    return int(row[0])


class FlakyRecorder(Recorder):
    """A recorder whose first write raises an error nobody planned for."""

    crash = True

    async def _write(self, rows: list[tuple[object, ...]]) -> None:
        if self.crash:
            self.crash = False
            raise RuntimeError("a bug in the write, once")
        await super()._write(rows)


async def test_a_crashed_sink_loop_is_restarted_and_counted(
    database_url: str, nats_server: EmbeddedNats, nc: NATS, prefix: str
) -> None:
    """A write raising something unexpected crashes the loop; it is restarted, counted in
    `loops`, and the batch it held is written at once, with nothing set aside."""
    config = make_config(nats_server.url, prefix, HOSTS, recorder={"flush_s": 0.2})
    subjects = Subjects(prefix)
    await provision(nc.jetstream(), subjects, config)
    pool = await open_pool(database_url)
    recorder = FlakyRecorder(nc, subjects, config, pool)
    await recorder.start()
    try:
        event = RequestEvent(request_id="r1", kind="generate", model="m", at=time.time())
        await nc.jetstream().publish(subjects.event("request"), encode(event))

        async def recorded() -> bool:
            return await rows(database_url, "SELECT count(*) FROM ollama_performance") == 1

        # Well within ack_wait (30 s): the crashed batch is handed back, not left to expire.
        await eventually(recorded)
        loop = recorder.loops["sink"]
        assert (loop.restarts, loop.running) == (1, 1)
        assert "a bug in the write, once" in loop.last_error and loop.failed_at is not None
        assert recorder.sink.set_aside == 0 and await dead_letters(database_url) == []
    finally:
        await recorder.stop(grace=2.0)
        await pool.close()


def _store(key: str, model: str = "llama3.2:3b") -> bytes:
    answer = Answer(kind=Kind.GENERATE, model=model, text=f"answer for {key}")
    return encode(CacheStore(key=key, answer=answer, at=time.time()))


async def test_the_cache_keeper_sets_aside_what_it_cannot_keep(
    database_url: str, stack_factory: StackFactory, nc: NATS, prefix: str
) -> None:
    """In one batch, an unreadable store, a key the bucket refuses and a model Postgres
    refuses are set aside; the answers around them reach both tiers, put once each."""
    sections = {"actors": ("cache",), "database": {"url": database_url}}
    stack = await stack_factory(HOSTS, **sections)
    await stack.stop(grace=1.0)  # the stream and the durable consumer stay: one batch next
    subjects = Subjects(prefix)
    token = model_token("llama3.2:3b")
    good = [f"{token}.{'a' * 64}", f"{token}.{'b' * 64}", f"{token}.{'c' * 64}"]
    bad = [b'{"type": "cache_store", "key":', _store("not a key"), _store("x.y", model="m\x00")]
    puts: Counter[str] = Counter()

    async def put(msg: Msg) -> None:
        puts[msg.subject.removeprefix(f"$KV.{subjects.cache_bucket}.")] += 1

    sub = await nc.subscribe(f"$KV.{subjects.cache_bucket}.>", cb=put)
    js = nc.jetstream()
    for payload in [_store(good[0]), bad[0], bad[1], _store(good[1]), bad[2], _store(good[2])]:
        await js.publish(subjects.event("cache"), payload)
    stack = await stack_factory(HOSTS, **sections)
    assert stack.cache is not None

    async def settled() -> bool:
        return stack.cache is not None and stack.cache.sink.set_aside == 3

    await eventually(settled)
    await nc.flush()
    await sub.unsubscribe()
    assert await rows(database_url, "SELECT count(*) FROM ollama_cache") == 3
    assert stack.cache.sink.written == 3
    assert all(puts[key] == 1 for key in good), puts  # a split batch puts nothing twice
    letters = await dead_letters(database_url)
    assert [bytes(r["payload"]) for r in letters] == bad
    assert {r["consumer"] for r in letters} == {"cache-keeper"}
    unreadable, bad_key, bad_model = (r["reason"] for r in letters)
    assert unreadable.startswith("unreadable: DecodeError")
    assert bad_key.startswith("InvalidKeyError")
    assert bad_model.startswith("CharacterNotInRepertoireError [22021]")
    assert (
        stack.metrics.registry.get_sample_value(
            "ollamesh_events_set_aside_total", {"consumer": "cache-keeper"}
        )
        == 3
    )


class ClosingRecorder(Recorder):
    """A recorder whose connection to NATS closes right after its first batch commits."""

    async def _write(self, rows: list[tuple[object, ...]]) -> None:
        await super()._write(rows)
        self.sink.stop()
        await self.nc.close()


async def test_an_ack_lost_after_a_commit_is_logged(
    database_url: str, nats_server: EmbeddedNats, nc: NATS, prefix: str
) -> None:
    """The batch committed, its acks could not be sent: that is said in the log (the
    events come again and their rows are written once), never swallowed."""
    config = make_config(nats_server.url, prefix, HOSTS, recorder={"flush_s": 0.2})
    subjects = Subjects(prefix)
    await provision(nc.jetstream(), subjects, config)
    pool = await open_pool(database_url)
    own = await connect(nats_server.url, name="recorder")
    recorder = ClosingRecorder(own, subjects, config, pool)
    await recorder.start()
    try:
        with structlog.testing.capture_logs() as logs:
            event = RequestEvent(request_id="r1", kind="generate", model="m", at=time.time())
            await nc.jetstream().publish(subjects.event("request"), encode(event))
            await eventually(lambda: any(e["event"] == "events_ack_failed" for e in logs))
        [failed] = [e for e in logs if e["event"] == "events_ack_failed"]
        assert failed["events"] == 1 and "Closed" in failed["error"]
        assert await rows(database_url, "SELECT count(*) FROM ollama_performance") == 1
    finally:
        await recorder.stop(grace=1.0)
        await pool.close()
