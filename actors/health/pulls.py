"""Model pulls: at most one per host and model across every monitor, progress on NATS.

A pull claims a marker in the health bucket (`pull.<host>.<model>`, an atomic create).
A second request for the same pull, in this process or in another monitor, joins it:
it waits for the pull's last progress event instead of starting a download of its own.
The owner refreshes the marker while it pulls; a marker whose owner died expires with
the bucket's TTL, and whoever waits on it is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from actors.backends.admin import Admin
from actors.backends.ollama_api import PullLine
from bus.connection import next_message
from bus.errors import OllameshError, Unavailable, UpstreamError, error_from_wire
from bus.subjects import Subjects, model_token
from schemas import encode
from schemas.fleet import PullProgress

__all__ = ["Pulls"]

log = structlog.get_logger("actors.health.pulls")

# Progress events of one pull: at most this often, besides every change of status.
_PROGRESS_EVERY_S = 0.1
_progress = msgspec.json.Decoder(PullProgress)


class Pulls:
    """Pulls under way; `pull()` starts one or joins the one already running."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        kv: KeyValue,
        admin: Callable[[str], Admin],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        *,
        timeout_s: float,
        marker_ttl_s: float,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._kv = kv
        self._admin = admin
        self._spawn = spawn
        self._timeout_s = timeout_s
        self._refresh_s = marker_ttl_s / 3
        self._local: dict[tuple[str, str], asyncio.Task[str | OllameshError]] = {}
        self._following: set[tuple[str, str]] = set()

    def running(self, host: str, model: str) -> bool:
        """Whether this process pulls `model` onto `host`, or waits on another's pull."""
        return (host, model) in self._local

    def following(self, host: str, model: str) -> bool:
        """Whether this process waits on another monitor's pull of `model` onto `host`."""
        return (host, model) in self._following

    async def pull(self, host: str, model: str) -> str:
        """Pull `model` onto `host`; return `pulled`, or `joined` if it was under way.

        Raises the pull's typed failure (`ModelNotFound`, `DiskFull`, `HostUnavailable`,
        `Timeout`) for every request waiting on it.
        """
        key = (host, model)
        task = self._local.get(key)
        joined = task is not None
        if task is None:
            task = self._spawn(self._run(host, model))
            self._local[key] = task
            task.add_done_callback(lambda _: self._local.pop(key, None))
        outcome = await asyncio.shield(task)
        if isinstance(outcome, OllameshError):
            raise outcome
        return "joined" if joined else outcome

    async def _run(self, host: str, model: str) -> str | OllameshError:
        """The pull's outcome: its failure is returned, for every waiter to raise."""
        try:
            return await self._claim(host, model)
        except OllameshError as exc:
            return exc

    async def _claim(self, host: str, model: str) -> str:
        subject = self._subjects.pull_progress(host, model)
        marker = f"pull.{model_token(host)}.{model_token(model)}"
        # Subscribed before the claim, so the end of another monitor's pull is not missed.
        sub = await self._nc.subscribe(subject)
        try:
            try:
                await self._kv.create(marker, str(time.time()).encode())
            except (KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                self._following.add((host, model))
                try:
                    return await self._follow(sub, subject, marker)
                finally:
                    self._following.discard((host, model))
            try:
                await self._download(host, model, subject, marker)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await self._kv.delete(marker)
            return "pulled"
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _download(self, host: str, model: str, subject: str, marker: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent_at = refreshed_at = started
        status = ""
        log.info("pull_started", host=host, model=model)
        try:
            async for line in self._admin(host).pull(model, self._timeout_s):
                now = loop.time()
                # A layer's last line always goes out, so progress ends at its total.
                finished = bool(line.total) and line.completed >= line.total
                if line.status != status or finished or now - sent_at >= _PROGRESS_EVERY_S:
                    status, sent_at = line.status, now
                    await self._publish(subject, _event(host, model, line))
                if now - refreshed_at >= self._refresh_s:
                    refreshed_at = now
                    await self._kv.put(marker, str(time.time()).encode())
        except OllameshError as exc:
            log.warning("pull_failed", host=host, model=model, code=exc.code, error=exc.message)
            done = PullProgress(host=host, model=model, done=True, error=exc.to_wire())
            await self._publish(subject, done)
            raise
        except asyncio.CancelledError:  # the monitor is stopping: tell whoever waits on it
            stopped = Unavailable("the monitor pulling this model stopped; pull again")
            log.warning("pull_abandoned", host=host, model=model)
            done = PullProgress(host=host, model=model, done=True, error=stopped.to_wire())
            with contextlib.suppress(nats.errors.Error):
                await self._publish(subject, done)
            raise
        seconds = round(loop.time() - started, 3)
        log.info("pull_finished", host=host, model=model, seconds=seconds)
        await self._publish(
            subject, PullProgress(host=host, model=model, status="success", done=True)
        )

    async def _publish(self, subject: str, event: PullProgress) -> None:
        event.at = time.time()
        await self._nc.publish(subject, encode(event))

    async def _follow(self, sub: Subscription, subject: str, marker: str) -> str:
        """Wait for another pull of the same model onto the same host to end.

        The marker is looked at again every refresh period: gone without a last event
        means its owner stopped, and the waiter is told so.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while True:
            try:
                entry = await self._kv.get(marker)
                claimed_at: float | None = float((entry.value or b"0").decode())
            except KeyNotFoundError:
                claimed_at = None
            # It may have ended before this subscription: its last event says so.
            last = await self._last(subject)
            if last is not None and last.done and (claimed_at is None or last.at >= claimed_at):
                return _outcome(last)
            if claimed_at is None:
                raise UpstreamError("the monitor running this pull stopped; pull again")
            if loop.time() >= deadline:
                raise UpstreamError(f"the pull under way took longer than {self._timeout_s:.0f}s")
            look_again = min(deadline, loop.time() + self._refresh_s)
            while (left := look_again - loop.time()) > 0:
                try:
                    msg = await next_message(sub, left)
                except TimeoutError:
                    break
                event = _progress.decode(msg.data)
                if event.done:
                    return _outcome(event)

    async def _last(self, subject: str) -> PullProgress | None:
        try:
            msg = await self._js.get_last_msg(self._subjects.event_stream, subject)
        except NotFoundError:
            return None
        return _progress.decode(msg.data) if msg.data else None


def _event(host: str, model: str, line: PullLine) -> PullProgress:
    return PullProgress(
        host=host,
        model=model,
        status=line.status,
        digest=line.digest,
        completed=line.completed,
        total=line.total,
    )


def _outcome(event: PullProgress) -> str:
    if event.error is not None:
        raise error_from_wire(event.error)
    return "joined"
