"""Serving one request: take it (or leave it, if delivered again), call the host, stream
the answer, and on failure retry before the first token, fall back, or end it; hand it
back when stopping; one event when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from actors.backends.backend import Backend
from actors.backends.http import HostUnavailable, StreamTimeouts
from actors.backends.ollama_api import Line
from actors.backends.policy import ModelPolicy
from actors.executor.emit import Emitter, NotStored, SoFar, StreamEnded
from actors.executor.redelivery import Redelivery, judge_redelivery
from actors.executor.resume import continued, stored_so_far, unmovable
from bus.actor import reply_error
from bus.claims import ROUTER
from bus.errors import (
    Cancelled,
    Internal,
    ModelNotFound,
    OllameshError,
    PayloadTooLarge,
    Timeout,
    UpstreamError,
)
from bus.queue import enqueue
from bus.subjects import model_token
from schemas import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    Kind,
    Request,
    decode_request,
    encode,
    without_routing,
)
from schemas.answers import STAT_FIELDS, done_of, result_of
from schemas.internal import Answer, CacheStore, RequestEvent, Work, decode_work

__all__ = ["Serving"]


# Keep-alives sent within one ack wait: one lost still leaves three to arrive in time.
_KEEPALIVES_PER_ACK_WAIT = 4
# A stopping executor's longest try to hand back or end one request.
_HAND_BACK_S = 2.0
# Finished streams kept to complete after a reconnection (those that ended within the
# crash window before the drop).
_FINISHED_KEEP_S = 5.0
# How long the end of a request waits for the server to confirm its acknowledgement (a
# stream leader's election included), and each try.
_ACK_WITHIN_S = 30.0
_ACK_TRY_S = 2.0
_ACK_PAUSE_S = 0.1


def _stats(line: Line) -> dict[str, Any]:
    """Ollama's figures from its final line, under Ollama's names."""
    return {name: getattr(line, name) for name in STAT_FIELDS}


def _output_tokens(emitter: Emitter, last: Line) -> int:
    """The answer's tokens: this host's, and those of the hosts it moved from."""
    return last.eval_count + (emitter.so_far.tokens if emitter.so_far else 0)


def _host_request(work: Work, policy: ModelPolicy) -> Request:
    """The request as the host gets it: the resolved model, our own fields left out.

    Generation is always streamed from the host, even for a non-streamed client request,
    so the first-token and idle deadlines hold. The model's load-time options and its pin
    override the client's, so no request makes Ollama reload or unload a shared model.
    """
    request = decode_request(work.kind, work.body)
    return without_routing(
        request,
        model=work.model,
        stream=work.kind is not Kind.EMBED,
        options=policy.options(work.model, request.options),
        keep_alive=policy.keep_alive(work.model, request.keep_alive),
    )


def _lines(host: Backend, request: Request, timeouts: StreamTimeouts) -> AsyncIterator[list[Line]]:
    if isinstance(request, ChatRequest):
        return host.chat(request, timeouts)
    assert isinstance(request, GenerateRequest)
    return host.generate(request, timeouts)


class Serving:
    """A part of `Executor` (its state is set up in `Executor.__init__`): one request at a time."""

    async def _take(self, msg: Msg) -> None:
        try:
            work = decode_work(msg.data)
        except msgspec.DecodeError as exc:
            self.log.error("work_unreadable", error=str(exc))
            await msg.term()
            return
        if work.request_id in self._running:
            # Delivered again while this executor still serves it (a restart made the
            # server forget its keep-alives): the running task acknowledges it.
            self.log.info("redelivery_left_to_owner", request_id=work.request_id, owner="self")
            return
        task = self.spawn(self._serve(work, msg, msg.metadata.num_delivered))
        self._running[work.request_id] = task
        self._load_changed()
        try:
            await asyncio.wait({task})
        finally:
            self._running.pop(work.request_id, None)
            if emitter := self._emitters.pop(work.request_id, None):
                self._keep(emitter)
            self._superseded.discard(work.request_id)
            self._load_changed()

    def _keep(self, emitter: Emitter) -> None:
        """Keep a finished stream a while: its last messages left without a round trip,
        and a server dying right then loses them; `reconnected` sends them again."""
        now = time.monotonic()
        self._finished.append((now, emitter))
        while (
            self.nc.is_connected
            and self._finished
            and self._finished[0][0] < now - _FINISHED_KEEP_S
        ):
            self._finished.popleft()

    async def _serve(self, work: Work, msg: Msg, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rid = work.request_id
        # This task's own context: every line logged while serving it names the request,
        # whichever module logs it.
        structlog.contextvars.bind_contextvars(request_id=rid)
        log = self.log.bind(model=work.model, attempt=attempt)
        emitter = Emitter(
            self.nc,
            self.js,
            self.subjects.chunk_stream,
            self.subjects.stream(rid),
            rid,
            window_s=self.cfg.coalesce_ms / 1000,
            # A cacheable answer is streamed even to a non-streamed client: identical
            # requests that arrive meanwhile follow it (single-flight).
            publish=work.stream or work.cache_key is not None,
        )
        self._emitters[rid] = emitter
        keepalive = loop.create_task(self._keep_alive(msg, log))
        failure: OllameshError | None = None
        last = Line()
        calling = False  # failures while the host works count against its circuit
        try:
            if attempt > 1 and not await self._take_over(work, msg, emitter, log):
                return
            if work.model not in self._pullers:
                # The model was withdrawn (its circuit opened) while this work waited.
                log.info("request_handed_back", reason="model withdrawn")
                await self._release(work)
                await msg.nak()
                return
            if not await self._claim(work, msg, log):
                return
            await self._check_admissible(work)
            request: Request | None = _host_request(work, self._policy)
            if emitter.so_far is not None:
                raw = self.host.raw_completions
                request = continued(request, emitter.so_far, raw_completions=raw)
            timeouts = self._timeouts(work)
            calling, called = True, loop.time()
            if request is None:  # the answer so far is whole: num_predict was reached
                last = Line(done=True, done_reason="length")
            elif isinstance(request, EmbedRequest):
                last = await self.host.embed(request, timeouts.total)
            else:
                async for lines in _lines(self.host, request, timeouts):
                    await emitter.add(lines)
                    last = lines[-1]
            calling = False
            self._failures = 0
            # The host's own speed: a model load is the warm-up's cost, not the host's.
            service_ms = (loop.time() - called) * 1000 - (last.load_duration or 0) / 1e6
            await self._host_served(work.model, max(service_ms, 0.0))
            await self._deliver(work, emitter, last)
        except (StreamEnded, asyncio.CancelledError) as exc:
            if rid in self._superseded or isinstance(exc, StreamEnded):
                # Someone else ended the stream (a retry elsewhere while we were cut off):
                # send nothing more, and leave the work and its event to them.
                log.warning("request_superseded")
                if isinstance(exc, asyncio.CancelledError):
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return
            if rid not in self._cancelled:
                await self._hand_back(work, msg, emitter, log)
                raise
            # The client's cancel ends this request normally; the task goes on to report it.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            failure = Cancelled("cancelled by the client", request_id=rid)
        except NotStored:
            # NATS was out of reach for the whole wait: the work stays unacknowledged,
            # so it is delivered again and the stream ended then.
            log.error("request_end_not_stored")
            return
        except (HostUnavailable, ModelNotFound) as exc:
            if isinstance(exc, HostUnavailable):
                self._host_failed(work.model)
            if emitter.started or attempt >= self.cfg.max_attempts:
                failure = exc
            else:
                await self._retry(work, msg, exc, log)
                return
        except OllameshError as exc:
            if calling and isinstance(exc, UpstreamError | Timeout):
                self._host_failed(work.model)
                stalled = loop.time() - called < timeouts.total  # not its whole time spent
                movable = emitter.started and stalled and attempt < self.cfg.max_attempts
                if movable and await self._move(work, msg, emitter, log, exc):
                    return
            failure = exc
            # An answer begun on this model goes on on it: never on a fallback.
            unbegun = not emitter.started and emitter.so_far is None
            if calling and isinstance(exc, Timeout) and unbegun and work.fallbacks:
                failure = await self._fall_back(work, msg, log)
                if failure is None:
                    return
        except Exception as exc:
            log.exception("serve_crashed")
            failure = Internal(f"executor failed: {exc!r}")
        finally:
            keepalive.cancel()
            emitter.close()
        if failure is not None:
            log.warning("request_failed", code=failure.code, error=failure.message)
            try:
                await self._fail(work, emitter, failure)
            except StreamEnded:
                log.warning("request_superseded")
                return
            except NotStored:
                log.error("request_end_not_stored")
                return
        else:
            log.debug("request_done", chunks=emitter.seq, moved=emitter.so_far is not None)
        await self._emit_event(work, emitter, last, failure, attempt, started)
        await self._acknowledge(msg, log)

    async def _acknowledge(self, msg: Msg, log: structlog.BoundLogger) -> None:
        """Acknowledge the work, and wait for the server to confirm it: an ack lost with
        a dying stream leader would have the work delivered, and served, again. Until
        then this executor still says on its board that it serves the request, so a
        delivery meanwhile is left to it."""
        try:
            async with asyncio.timeout(_ACK_WITHIN_S):
                while True:
                    try:
                        await msg.ack_sync(timeout=_ACK_TRY_S)
                        return
                    except nats.errors.Error as exc:  # no leader yet, or reconnecting
                        if self.nc.is_closed or self.nc.is_draining:
                            # Stopping: no reply can come now; the ack may still go.
                            with contextlib.suppress(nats.errors.Error):
                                await msg.ack()
                            log.warning("ack_unconfirmed", error=repr(exc), stopping=True)
                            return
                        log.info("ack_unconfirmed", error=repr(exc))
                        await self.nc.wait_connected(_ACK_WITHIN_S)
                        await asyncio.sleep(_ACK_PAUSE_S)  # paced: the server answered at once
        except TimeoutError:
            log.error("ack_not_confirmed", within_s=_ACK_WITHIN_S)

    async def _move(
        self,
        work: Work,
        msg: Msg,
        emitter: Emitter,
        log: structlog.BoundLogger,
        exc: OllameshError | None = None,
    ) -> bool:
        """The host failed mid-answer (`exc`), or this executor stops: hand the work back
        for whoever takes it next to go on from the chunks sent, once the stream holds
        them all. False if the request may not move, or they could not be stored."""
        why = unmovable(decode_request(work.kind, work.body))
        if why is None and (emitter.tool_calls or not emitter.publishing):
            why = "it called a tool" if emitter.tool_calls else "it is not streamed"
        if why is not None:
            log.info("request_not_moved", reason=why)
            return False
        try:
            await emitter.flush()
            await emitter.resync()
        except StreamEnded:
            log.warning("request_superseded")
            return True
        except (nats.errors.Error, TimeoutError) as err:
            log.warning(
                "request_not_moved", reason="its chunks could not be stored", error=repr(err)
            )
            return False
        if exc is None:
            log.info("request_handed_over", sent=emitter.seq)
            await self._release(work)
            await msg.nak()
        else:
            log.warning("request_moving", error=exc.message, sent=emitter.seq)
            await self._retry(work, msg, exc, log)
        return True

    async def _take_over(
        self, work: Work, msg: Msg, emitter: Emitter, log: structlog.BoundLogger
    ) -> bool:
        """Work delivered again: whether to serve it (True), or leave it as judged."""
        rid = work.request_id
        subject = self.subjects.stream(rid)
        verdict, stored = await judge_redelivery(
            self._board,
            self.js,
            stream=self.subjects.chunk_stream,
            subject=subject,
            request_id=rid,
            published=emitter.publishing,
            me=self.executor_id,
        )
        match verdict:
            case Redelivery.OWNED:
                log.info("redelivery_left_to_owner")
                return False
            case Redelivery.ENDED:
                log.info("redelivery_already_ended")
                await msg.ack()
                return False
            case Redelivery.BROKEN:
                # Tokens already reached the client from an executor that is gone (or
                # from a host that failed): never restart the answer under the same seq
                # numbers; go on after them, or end it after them.
                why = unmovable(decode_request(work.kind, work.body))
                so_far = None
                if why is None:
                    so_far = await stored_so_far(self.js, self.subjects.chunk_stream, subject)
                    why = "its stored chunks have a gap or a tool call" if so_far is None else None
                if so_far is None:
                    log.warning("request_not_moved", reason=why, sent=stored)
                    emitter.continue_after(SoFar(stored))
                    raise UpstreamError("the host serving this request stopped mid-stream")
                log.info("request_moved", sent=so_far.seq, tokens=so_far.tokens)
                emitter.continue_after(so_far)
        return True

    async def _claim(self, work: Work, msg: Msg, log: structlog.BoundLogger) -> bool:
        """A request with a deadline is ended by whoever claims it first: this executor
        (it serves it, and stops at the deadline) or its router (at the deadline, while
        it was still queued). False when the router did: the work is dropped unsent."""
        if work.deadline_at is None:
            return True
        if await self._claims.claim(work.request_id, self.executor_id) != ROUTER:
            return True
        log.info("request_expired_in_queue", by="router")
        await msg.ack()
        return False

    async def _check_admissible(self, work: Work) -> None:
        if work.request_id in self._cancelled:
            raise Cancelled("cancelled while queued", request_id=work.request_id)
        if work.deadline_at is not None and time.time() >= work.deadline_at:
            raise Timeout("the deadline passed while the request was queued")

    def _timeouts(self, work: Work) -> StreamTimeouts:
        total = self.cfg.total_timeout_s
        if work.deadline_at is not None:
            total = min(total, work.deadline_at - time.time())
        return StreamTimeouts(
            first_token=min(total, self.cfg.first_token_timeout_s),
            idle=self.cfg.idle_timeout_s,
            total=total,
        )

    async def _keep_alive(self, msg: Msg, log: structlog.BoundLogger) -> None:
        """Tell JetStream the work is still being served, so it is not redelivered.

        The keep-alives are the executor's heartbeat for this request: when they stop
        (the process died), the work is delivered again within `ack_wait_s`.
        """
        while True:
            await asyncio.sleep(self.cfg.ack_wait_s / _KEEPALIVES_PER_ACK_WAIT)
            try:
                await msg.in_progress()
            except nats.errors.Error as exc:  # down for now: the next one may get through
                log.debug("keepalive_failed", error=repr(exc))

    def _answer(self, work: Work, emitter: Emitter, last: Line) -> Answer:
        return Answer(
            kind=work.kind,
            model=work.model,
            host=self.host_url,
            text="".join(emitter.text),
            thinking="".join(emitter.thinking) or None,
            tool_calls=emitter.tool_calls or None,
            embeddings=last.embeddings,
            fallback_from=work.fallback_from,
            moved=emitter.so_far is not None,
            **_stats(last) | {"eval_count": _output_tokens(emitter, last)},
        )

    async def _deliver(self, work: Work, emitter: Emitter, last: Line) -> None:
        answer = self._answer(work, emitter, last)
        result = None
        if not work.stream and work.reply is not None:
            result = encode(result_of(answer, work.request_id))
            if len(result) > self.nc.max_payload:  # the server would refuse it
                raise PayloadTooLarge(
                    f"the answer is {len(result)} bytes, over the server's max_payload of"
                    f" {self.nc.max_payload}: ask for it streamed"
                )
        if emitter.publishing:
            await emitter.finish(done_of(answer, work.request_id))
        if result is not None and work.reply is not None:
            await self.nc.publish(work.reply, result)
        if work.cache_key is not None:
            # Captured by the event stream: the cache actor keeps it, even if it is down now.
            store = CacheStore(key=work.cache_key, answer=answer, at=time.time())
            try:
                await self.nc.publish(self.subjects.event("cache"), encode(store))
            except nats.errors.MaxPayloadError:
                self.log.warning("answer_not_cached", reason="larger than max_payload")

    async def _fail(self, work: Work, emitter: Emitter, failure: OllameshError) -> None:
        if emitter.publishing:
            await emitter.finish(failure.to_wire(work.request_id))
        if not work.stream and work.reply:
            await reply_error(self.nc, work.reply, failure, work.request_id)

    async def _fall_back(
        self, work: Work, msg: Msg, log: structlog.BoundLogger
    ) -> OllameshError | None:
        """The model gave no first token in time: queue the work for its next fallback.

        Returns the error to end the request with if the fallback's queue refused it.
        """
        model, rest = work.fallbacks[0], work.fallbacks[1:]
        moved = msgspec.structs.replace(
            work, model=model, fallbacks=rest, fallback_from=work.fallback_from or work.model
        )
        try:
            await enqueue(
                self.js,
                self.subjects,
                moved,
                max_payload=self.nc.max_payload,
                msg_id=f"{work.request_id}.{model_token(model)}",
            )
        except OllameshError as exc:
            log.warning("request_fallback_failed", to=model, error=exc.message)
            return exc
        log.warning("request_fallback", to=model)
        await msg.ack()
        return None

    async def _retry(
        self, work: Work, msg: Msg, exc: OllameshError, log: structlog.BoundLogger
    ) -> None:
        """Put the work back for any host, and rest this one a little."""
        pause = self._note_failure()
        log.warning("request_retry", error=exc.message, backoff_s=pause)
        await self._release(work)
        await msg.nak(delay=pause)

    async def _release(self, work: Work) -> None:
        """No longer serving `work` (about to hand it back): say so on the board first,
        so the executor it is delivered to next does not leave it to this one."""
        self._running.pop(work.request_id, None)
        try:
            await self._board.publish(self._load())
        except Exception as exc:
            self.log.warning("board_publish_failed", error=repr(exc))

    async def _hand_back(
        self, work: Work, msg: Msg, emitter: Emitter, log: structlog.BoundLogger
    ) -> None:
        """The executor is stopping: return unstarted work, hand started streams over
        to go on elsewhere, or end them cleanly if they may not move.

        Within `_HAND_BACK_S`: with NATS out of reach the work stays unacknowledged, and
        is delivered again (and goes on, or ends, there) within `ack_wait_s`.
        """
        try:
            async with asyncio.timeout(_HAND_BACK_S):
                if not emitter.started:
                    log.info("request_handed_back")
                    await self._release(work)
                    await msg.nak()
                    return
                if await self._move(work, msg, emitter, log):
                    return
                failure = UpstreamError(
                    "the executor stopped mid-stream", request_id=work.request_id
                )
                await self._fail(work, emitter, failure)
                await msg.ack()
        except (TimeoutError, nats.errors.Error, StreamEnded, NotStored) as exc:
            log.warning("request_not_handed_back", error=repr(exc))

    async def _emit_event(
        self,
        work: Work,
        emitter: Emitter,
        last: Line,
        failure: OllameshError | None,
        attempt: int,
        started: float,
    ) -> None:
        event = RequestEvent(
            request_id=work.request_id,
            kind=work.kind,
            model=work.model,
            host=self.host_url,
            outcome="ok" if failure is None else failure.code,
            latency_ms=round((time.time() - work.accepted_at) * 1000, 3),
            ttft_ms=(
                round((emitter.first_token_at - started) * 1000, 3)
                if emitter.first_token_at is not None
                else None
            ),
            prompt_tokens=last.prompt_eval_count,
            output_tokens=_output_tokens(emitter, last),
            attempt=attempt,
            fallback_from=work.fallback_from,
            template=work.template,
            moved=emitter.so_far is not None,
            at=time.time(),
        )
        # Once (the request id is the message id: a request that somehow ends twice is
        # recorded once), and again after a reconnection.
        await self.nc.publish_once(
            self.subjects.event("request"), encode(event), msg_id=work.request_id
        )
