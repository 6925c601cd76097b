"""Create or update the streams and buckets ollamesh needs; safe to run any number of times."""

from __future__ import annotations

from typing import NamedTuple

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from bus.config import Config
from bus.subjects import Subjects

__all__ = ["Buckets", "ensure_stream", "provision", "stream_configs"]

log = structlog.get_logger("bus.provision")

# Work waiting longer than a day is stale: its client gave up long ago.
_WORK_MAX_AGE_S = 24 * 3600.0
# Dedup window for `Nats-Msg-Id` = request id: a client retrying a send is not served twice.
_DEDUP_WINDOW_S = 120.0
# Claims live this long past the longest a request may run.
_CLAIM_SLACK_S = 300.0


def stream_configs(subjects: Subjects, config: Config) -> list[StreamConfig]:
    """The streams of one deployment: chunks (replayable), work queues, events."""
    return [
        StreamConfig(
            name=subjects.chunk_stream,
            description="Token chunks of every request, replayable for a while",
            subjects=[subjects.streams],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=config.nats.chunk_max_age_s,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
            num_replicas=config.nats.replicas,
        ),
        StreamConfig(
            name=subjects.work_stream,
            description="One work queue per model and priority; executors pull from it",
            subjects=[subjects.works],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=_WORK_MAX_AGE_S,
            duplicate_window=_DEDUP_WINDOW_S,
            # The bound of each queue: the server refuses work beyond it, for every router.
            max_msgs_per_subject=config.routing.queue_max,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            num_replicas=config.nats.replicas,
        ),
        StreamConfig(
            name=subjects.event_stream,
            description="Request lifecycle, retries and host events, for the recorder",
            subjects=[subjects.events],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=config.nats.event_max_age_s,
            discard=DiscardPolicy.OLD,
            num_replicas=config.nats.replicas,
        ),
    ]


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    """Create the stream, or bring an existing one to this configuration."""
    try:
        await js.stream_info(cfg.name)  # type: ignore[arg-type]
    except NotFoundError:
        await js.add_stream(cfg)
        log.info("stream_created", stream=cfg.name)
        return
    try:
        await js.update_stream(cfg)
    except BadRequestError as exc:
        # Some settings (retention, storage) cannot change in place; keep what exists.
        log.warning("stream_not_updated", stream=cfg.name, error=exc.description)


class Buckets(NamedTuple):
    """The key-value buckets of one deployment."""

    hosts: KeyValue
    limits: KeyValue
    cache: KeyValue
    health: KeyValue
    claims: KeyValue


async def _bucket(js: JetStreamContext, cfg: KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(cfg)
    except BadRequestError:
        return await js.key_value(cfg.bucket)


async def provision(js: JetStreamContext, subjects: Subjects, config: Config) -> Buckets:
    """Ensure every stream and bucket exists; return the buckets."""
    for cfg in stream_configs(subjects, config):
        await ensure_stream(js, cfg)
    hosts = KeyValueConfig(
        bucket=subjects.host_bucket,
        description="Executors announce their hosts and models here, with a TTL",
        history=1,
        ttl=config.executor.registry_ttl_s,
        storage=StorageType.MEMORY,
        replicas=config.nats.replicas,
    )
    limits = KeyValueConfig(
        bucket=subjects.limit_bucket,
        description="Rate limit state per model, shared by every router",
        history=1,
        # No TTL: a key may hold reservations far ahead of now (a long deadline's wait),
        # and there is one key per limited model and limit.
        storage=StorageType.MEMORY,
        replicas=config.nats.replicas,
    )
    cache = KeyValueConfig(
        bucket=subjects.cache_bucket,
        description="Cached answers shared by every router; Postgres keeps them durably",
        history=1,
        ttl=config.cache.ttl_s,
        max_bytes=config.cache.max_bytes,
        storage=StorageType.FILE,
        replicas=config.nats.replicas,
    )
    health = KeyValueConfig(
        bucket=subjects.health_bucket,
        description="The health monitor's view of each host, and the pulls under way",
        history=1,
        # Entries are refreshed every check: one left behind by a stopped monitor expires.
        ttl=config.health.entry_ttl_s,
        storage=StorageType.MEMORY,
        replicas=config.nats.replicas,
    )
    claims = KeyValueConfig(
        bucket=subjects.claim_bucket,
        description="Who ends each request that has a deadline: its router or its executor",
        history=1,
        # A claim must outlive the longest a request may run, and no more.
        ttl=config.executor.total_timeout_s + _CLAIM_SLACK_S,
        # On file: a restart must not let both a router and an executor end a request.
        storage=StorageType.FILE,
        replicas=config.nats.replicas,
    )
    cache_kv = await _bucket(js, cache)
    # A full cache drops its oldest answers rather than refusing new ones.
    stream = await js.stream_info(f"KV_{subjects.cache_bucket}")
    if stream.config.discard is not DiscardPolicy.OLD:
        stream.config.discard = DiscardPolicy.OLD
        await js.update_stream(stream.config)
    return Buckets(
        await _bucket(js, hosts),
        await _bucket(js, limits),
        cache_kv,
        await _bucket(js, health),
        await _bucket(js, claims),
    )
