"""NATS micro-service discovery: every actor answers `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`.

The answers follow the NATS micro protocol (ADR-32), so `nats micro list`, `nats micro
info` and `nats micro stats` show each actor: its endpoints (the subjects it serves, with
their queue groups) and, per endpoint, requests, errors, the last error and processing
time. `$SRV.STATS` also carries `loops`: each background loop's running count, restarts
and last error, so a loop that keeps crashing is visible from outside.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
import uuid
from collections.abc import Mapping

from msgspec import Struct
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import encode

__all__ = ["Discovery", "EndpointStats"]

_PREFIX = "$SRV"


def _version() -> str:
    try:
        return importlib.metadata.version("ollamesh")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class EndpointStats(Struct, kw_only=True):
    """One endpoint as `$SRV.STATS` reports it (times in nanoseconds)."""

    name: str
    subject: str
    queue_group: str
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0
    average_processing_time: int = 0
    data: dict[str, object] = {}

    def record(self, seconds: float, error: str | None = None) -> None:
        """Count one handled message."""
        self.num_requests += 1
        self.processing_time += int(seconds * 1e9)
        self.average_processing_time = self.processing_time // self.num_requests
        if error is not None:
            self.num_errors += 1
            self.last_error = error


class Discovery:
    """The discovery answers of one actor instance."""

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        loops: Mapping[str, object] | None = None,
    ) -> None:
        self.name = name
        self.id = uuid.uuid4().hex
        self.version = _version()
        self.description = description
        self.metadata = dict(metadata or {})
        self.endpoints: list[EndpointStats] = []
        # The actor's background loops: running, restarts, last error (beyond ADR-32).
        self.loops = loops if loops is not None else {}
        self._started = time.time()

    def endpoint(self, subject: str, queue: str) -> EndpointStats:
        """Register a subject the actor serves; return its counters."""
        stats = EndpointStats(
            name=subject.rsplit(".", 1)[-1], subject=subject, queue_group=queue or ""
        )
        self.endpoints.append(stats)
        return stats

    async def start(self, nc: NATS) -> list[Subscription]:
        """Answer the discovery subjects (for all services, this name, and this id)."""
        subs = []
        for verb, answer in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats)):
            for subject in (
                f"{_PREFIX}.{verb}",
                f"{_PREFIX}.{verb}.{self.name}",
                f"{_PREFIX}.{verb}.{self.name}.{self.id}",
            ):

                async def reply(msg: Msg, answer: object = answer) -> None:
                    if msg.reply:
                        await nc.publish(msg.reply, encode(answer()))  # type: ignore[operator]

                subs.append(await nc.subscribe(subject, cb=reply))
        return subs

    def _identity(self, kind: str) -> dict[str, object]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": self.metadata,
        }

    def _ping(self) -> dict[str, object]:
        return self._identity("ping")

    def _info(self) -> dict[str, object]:
        endpoints = [
            {"name": e.name, "subject": e.subject, "queue_group": e.queue_group, "metadata": {}}
            for e in self.endpoints
        ]
        return self._identity("info") | {"description": self.description, "endpoints": endpoints}

    def _stats(self) -> dict[str, object]:
        started = dt.datetime.fromtimestamp(self._started, dt.UTC)
        return self._identity("stats") | {
            "started": started.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "endpoints": self.endpoints,
            "loops": self.loops,
        }
