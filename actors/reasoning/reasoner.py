"""The reasoning coordinator: accepts chains, queues them, runs them, stores them.

Any number of coordinators share the work: `reason` is served by one of them (a queue
group), which records the chain and queues it durably; every coordinator pulls chains
from that queue, at most `reasoning.max_chains` at once. While a chain runs, its
coordinator tells JetStream so every second and notes it in the chain's row; one that
dies stops doing both, and the chain is delivered again (within `executor.ack_wait_s`)
to another coordinator, which continues it from its stored state.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import uuid

import asyncpg
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError

from actors.reasoning.chain import ChainRun, Roles
from actors.reasoning.store import ChainStore
from actors.reasoning.templates import ensure_templates
from actors.reasoning.writer import ChainWriter
from actors.store.sink import DOWN, unreachable_as
from bus.actor import Actor, reply_error, send_reply
from bus.client import Client
from bus.config import Config
from bus.connection import Connection
from bus.errors import (
    BadRequest,
    Cancelled,
    OllameshError,
    Timeout,
    Unavailable,
    error_from_wire,
    logged,
)
from bus.rpc import decode_body
from bus.subjects import Subjects
from schemas import Accepted, Done, Error, ReasonResult, decode_stream, encode
from schemas.internal import ChainWork
from schemas.reasoning import Chain, Chains, ChainState, ReasonGet, ReasonList, ReasonRequest

__all__ = ["Reasoner"]

_QUEUE = "reasoning"
_DATABASE = "the reasoning database"
_CONSUMER = "reasoning-chains"
# A pull lives this long at the server: stopping takes about as long.
_FETCH_S = 0.5
# A chain's coordinator notes it is alive this often per ack wait; an owner silent for
# longer than the ack wait is gone.
_HEARTBEATS_PER_ACK_WAIT = 4
# Cancels of chains not running here are remembered this long (it may be taken later).
_CANCEL_MEMORY_S = 600.0
_TEMPLATES_RETRY_MAX_S = 30.0

_decode_work = msgspec.json.Decoder(ChainWork).decode
_decode_request = msgspec.json.Decoder(ReasonRequest).decode


class Reasoner(Actor):
    """Multi-step reasoning on the fleet: plan, solve the steps as a graph, synthesise."""

    name = "reasoning"

    def __init__(
        self, nc: Connection, subjects: Subjects, config: Config, pool: asyncpg.Pool
    ) -> None:
        super().__init__(nc, subjects)
        self.nc: Connection = nc
        self.cfg = config.reasoning
        self.store = ChainStore(pool)
        self.js = nc.jetstream()
        # A client of the fleet like any other, on this process's connection.
        self.client = Client(nc=nc, prefix=subjects.prefix, timeout=config.executor.total_timeout_s)
        self.roles = Roles(
            decompose=self.cfg.decompose,
            solve=self.cfg.solve,
            synthesise=self.cfg.synthesise,
            mathematical="mathematical" if "mathematical" in config.roles else None,
        )
        self._ack_wait_s = config.executor.ack_wait_s
        self._max_request_bytes = config.router.max_request_bytes
        self.me = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, ChainRun] = {}
        self._cancelled: dict[str, float] = {}
        self._accepting = True
        # Chains are taken only once the prompt store holds the templates they use.
        self._templates_ready = asyncio.Event()

    async def setup(self) -> None:
        await self._ensure_consumer()
        await self.serve(self.subjects.reason, self._reason, queue=_QUEUE)
        await self.serve(self.subjects.reasoning("get"), self._get, queue=_QUEUE)
        await self.serve(self.subjects.reasoning("list"), self._list, queue=_QUEUE)
        await self.serve(self.subjects.cancels, self._on_cancel)
        self.supervise("templates", self._templates, endless=True)
        for _ in range(self.cfg.max_chains):
            self.supervise("chains", self._pull)

    async def before_drain(self) -> None:
        self._accepting = False

    async def reconnected(self) -> None:
        await self._ensure_consumer()

    async def _ensure_consumer(self) -> None:
        config = ConsumerConfig(
            durable_name=_CONSUMER,
            filter_subject=self.subjects.chain_work,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_deliver=-1,
            max_ack_pending=-1,
        )
        try:
            await self.js.add_consumer(self.subjects.work_stream, config)
        except BadRequestError as exc:
            self.log.info("consumer_exists", consumer=_CONSUMER, note=exc.description)

    async def _templates(self) -> None:
        """Put the prompt templates the store lacks, once it answers."""
        wait = 0.5
        while True:
            try:
                put = await ensure_templates(self.client)
            except OllameshError as exc:  # chains wait in the queue meanwhile
                self.log.warning("templates_waiting", error=exc.message, retry_in_s=wait)
                await asyncio.sleep(wait)
                wait = min(_TEMPLATES_RETRY_MAX_S, wait * 2)
                continue
            if put:
                self.log.info("templates_put", names=put)
            self._templates_ready.set()
            return

    # -- accepting a chain --------------------------------------------------------------

    async def _reason(self, msg: Msg) -> bytes | None:
        if len(msg.data) > min(self._max_request_bytes, self.nc.max_payload):
            raise BadRequest(f"the request is {len(msg.data)} bytes: too large")
        request = decode_body(ReasonRequest, msg.data, "reason")
        if not request.query.strip():
            raise BadRequest("query is empty")
        if not request.stream and not msg.reply:
            raise BadRequest("a non-streamed chain needs a reply subject (use request/reply)")
        chain_id = request.request_id or uuid.uuid4().hex
        with unreachable_as(_DATABASE):
            created = await self.store.create(chain_id, request.query, request.language)
        if not created and not request.stream:
            raise BadRequest(f"chain id {chain_id} is already in use", request_id=chain_id)
        if created:
            now = time.time()
            work = ChainWork(
                chain_id=chain_id,
                body=msgspec.Raw(msg.data),
                reply=None if request.stream else msg.reply,
                accepted_at=now,
                deadline_at=now + request.deadline_ms / 1000 if request.deadline_ms else None,
            )
            try:
                await self.js.publish(
                    self.subjects.chain_work, encode(work), headers={"Nats-Msg-Id": chain_id}
                )
            except nats.errors.Error as exc:
                raise Unavailable(f"could not queue the chain: {exc!r}") from exc
            self.log.info("chain_queued", chain_id=chain_id, query=request.query[:80])
        if not request.stream:
            return None  # the coordinator that runs it answers
        subject = self.subjects.stream(chain_id)
        return encode(Accepted(request_id=chain_id, model="", stream=subject, chain_id=chain_id))

    async def _get(self, msg: Msg) -> bytes:
        ask = decode_body(ReasonGet, msg.data, "reason.get")
        with unreachable_as(_DATABASE):
            chain = await self.store.get(ask.chain_id)
        if chain is None:
            raise BadRequest(f"no chain {ask.chain_id}")
        return encode(chain)

    async def _list(self, msg: Msg) -> bytes:
        ask = decode_body(ReasonList, msg.data, "reason.list")
        with unreachable_as(_DATABASE):
            return encode(Chains(chains=await self.store.recent(ask.limit)))

    async def _on_cancel(self, msg: Msg) -> None:
        chain_id = msg.subject.rsplit(".", 1)[-1]
        now = time.monotonic()
        self._cancelled = {k: t for k, t in self._cancelled.items() if now - t < _CANCEL_MEMORY_S}
        self._cancelled[chain_id] = now
        if task := self._running.get(chain_id):
            self.log.info("chain_cancelling", chain_id=chain_id)
            task.cancel()

    # -- running chains -----------------------------------------------------------------

    async def _pull(self) -> None:
        await self._templates_ready.wait()
        psub = await self.js.pull_subscribe_bind(
            durable=_CONSUMER, stream=self.subjects.work_stream
        )
        try:
            while self._accepting:
                try:
                    msgs = await psub.fetch(1, timeout=_FETCH_S)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await self._take(msg)
        finally:
            with logged(self.log, "chains_unsubscribe_failed"):
                await psub.unsubscribe()

    async def _take(self, msg: Msg) -> None:
        try:
            work = _decode_work(msg.data)
            request = _decode_request(work.body)
        except msgspec.DecodeError as exc:
            self.log.error("chain_work_unreadable", error=str(exc))
            await msg.term()
            return
        chain_id = work.chain_id
        if not self._accepting:
            await msg.nak()
            return
        if chain_id in self._running:
            return  # delivered again while it runs here: this run acknowledges it
        try:
            chain = await self.store.get(chain_id)
            if chain is None:
                await msg.ack()  # never recorded
                return
            if chain.state is not ChainState.RUNNING:
                await self._resend_end(work)
                await msg.ack()
                return
            if msg.metadata.num_delivered > 1 and await self._owned_elsewhere(chain_id):
                self.log.info("chain_left_to_owner", chain_id=chain_id)
                return
        except DOWN as exc:  # the database (or NATS) is out of reach: it waits queued
            self.log.warning(
                "chain_waits_for_database", chain_id=chain_id, error=repr(exc),
                retry_in_s=self._ack_wait_s,
            )  # fmt: skip
            with logged(self.log, "chain_not_handed_back", chain_id=chain_id):
                await msg.nak(delay=self._ack_wait_s)
            return
        task = self.spawn(self._run(work, request, chain, msg))
        self._running[chain_id] = task
        try:
            await asyncio.wait({task})
        finally:
            self._running.pop(chain_id, None)
            self._runs.pop(chain_id, None)

    async def _owned_elsewhere(self, chain_id: str) -> bool:
        """Whether another coordinator said it runs the chain within half the ack wait (a
        live one says so every quarter of it)."""
        owner, at = await self.store.owner(chain_id)
        fresh = at is not None and time.time() - at < self._ack_wait_s / 2
        return owner not in (None, self.me) and fresh

    async def _run(self, work: ChainWork, request: ReasonRequest, chain: Chain, msg: Msg) -> None:
        chain_id = work.chain_id
        log = self.log.bind(chain_id=chain_id)
        keepalive = asyncio.get_running_loop().create_task(self._keep_alive(chain_id, msg))
        writer = ChainWriter(self.nc, self.subjects, chain_id)
        run = ChainRun(
            self.client, self.store, writer, request, self.roles,
            chain_id=chain_id, context_tokens=self.cfg.context_tokens,
            deadline_at=work.deadline_at, resumed=msg.metadata.num_delivered > 1,
        )  # fmt: skip
        self._runs[chain_id] = run
        failure: OllameshError | None = None
        done: Done | None = None
        ended = False
        try:
            await self.store.own(chain_id, self.me)
            await writer.open()
            if chain_id in self._cancelled:
                raise Cancelled("cancelled while queued", request_id=chain_id)
            left = None if work.deadline_at is None else work.deadline_at - time.time()
            async with asyncio.timeout(left):
                done = await run.run(chain)
        except TimeoutError:
            failure = Timeout("the chain's deadline passed", request_id=chain_id)
        except asyncio.CancelledError:
            if chain_id not in self._cancelled:
                # Stopping: the chain goes back to the queue, for another coordinator to
                # finish (its calls under way go on, and are followed there).
                log.info("chain_handed_back")
                with logged(log, "chain_not_handed_back"):
                    await msg.nak()
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            failure = Cancelled("cancelled by the client", request_id=chain_id)
        except OllameshError as exc:
            failure = exc
        except DOWN as exc:
            # Its progress cannot be stored or sent: it stays queued, and is delivered
            # again (to any coordinator) within the ack wait, to go on from its store.
            log.warning("chain_interrupted", error=repr(exc), retry_in_s=self._ack_wait_s)
            return
        finally:
            keepalive.cancel()
        if failure is not None:
            ended = await self._fail(work, run, writer, failure)
        elif done is not None:
            ended = await self._end(work, writer, ChainState.DONE, done, done.answer, None)
            if ended:
                log.info("chain_done", steps=len(done.steps or []))
        if ended:
            await msg.ack()

    async def _fail(
        self, work: ChainWork, run: ChainRun, writer: ChainWriter, failure: OllameshError
    ) -> bool:
        chain_id = work.chain_id
        self.log.warning(
            "chain_failed", chain_id=chain_id, code=failure.code, error=failure.message
        )
        if isinstance(failure, Cancelled | Timeout):  # stop what the fleet does for it
            await run.cancel_calls(self.client.cancel)
        state = ChainState.CANCELLED if isinstance(failure, Cancelled) else ChainState.FAILED
        error = f"{failure.code}: {failure.message}"
        return await self._end(work, writer, state, failure.to_wire(chain_id), None, error)

    async def _end(
        self,
        work: ChainWork,
        writer: ChainWriter,
        state: ChainState,
        ending: Done | Error,
        answer: str | None,
        error: str | None,
    ) -> bool:
        """Store how the chain ended, then end its stream: a reader that sees the end finds
        the chain stored as ended, and a coordinator dying between the two leaves the
        stored ending for the one that takes the chain over to send. False if the database
        is unreachable: the chain stays queued, and is run again once delivered again."""
        try:
            await self.store.finish(work.chain_id, state, answer, error, encode(ending))
        except DOWN as exc:
            self.log.warning(
                "chain_end_not_stored", chain_id=work.chain_id, error=repr(exc),
                retry_in_s=self._ack_wait_s,
            )  # fmt: skip
            return False
        await self._send_end(work, writer, ending)
        return True

    async def _send_end(self, work: ChainWork, writer: ChainWriter, ending: Done | Error) -> None:
        """End the chain's stream and answer the caller waiting for it, if any."""
        await writer.end(ending)
        if not work.reply:
            return
        if isinstance(ending, Done):
            await send_reply(self.nc, work.reply, encode(_result(ending)), work.chain_id)
        else:
            await reply_error(self.nc, work.reply, error_from_wire(ending), work.chain_id)

    async def _resend_end(self, work: ChainWork) -> None:
        """A chain stored as ended, delivered again: its coordinator died before it sent
        the end, or only the acknowledgement was lost. Send the stored end if the stream
        lacks it."""
        writer = ChainWriter(self.nc, self.subjects, work.chain_id)
        await writer.open()
        if writer.ended:
            return
        stored = await self.store.ending(work.chain_id)
        if stored is None:
            return
        ending = decode_stream(stored)
        if isinstance(ending, Done | Error):
            self.log.info("chain_end_sent_again", chain_id=work.chain_id)
            await self._send_end(work, writer, ending)

    async def _keep_alive(self, chain_id: str, msg: Msg) -> None:
        """Tell JetStream (and the chain's row) the chain is being run, every quarter of
        the ack wait: when it stops, another coordinator takes the chain over."""
        while True:
            await asyncio.sleep(self._ack_wait_s / _HEARTBEATS_PER_ACK_WAIT)
            try:
                await msg.in_progress()
                await self.store.own(chain_id, self.me)
            except (nats.errors.Error, *DOWN) as exc:  # the next one may get through
                self.log.debug("chain_keepalive_failed", chain_id=chain_id, error=repr(exc))


def _result(done: Done) -> ReasonResult:
    return ReasonResult(
        request_id=done.request_id,
        chain_id=done.chain_id or done.request_id,
        answer=done.answer or "",
        steps=done.steps or [],
        model=done.model,
        host=done.host,
        prompt_eval_count=done.prompt_eval_count,
        eval_count=done.eval_count,
        total_duration=done.total_duration,
    )
