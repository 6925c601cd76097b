"""Messages between ollamesh's own processes: queued work, the host registry, the load
board, request events, answers on their way to the cache.

Not the public contract (that is `schemas`): clients never send these, and they may
change with ollamesh, within the same evolution rules (new fields get defaults; unknown
fields are ignored, so processes of two versions work side by side during an upgrade).
"""

from schemas.codec import (
    decode_answer,
    decode_cache_store,
    decode_event,
    decode_host,
    decode_load,
    decode_work,
)
from schemas.work import (
    Answer,
    CacheStore,
    ChainWork,
    HostInfo,
    HostLoad,
    ModelLoad,
    RequestEvent,
    Work,
)

__all__ = [
    "Answer",
    "CacheStore",
    "ChainWork",
    "HostInfo",
    "HostLoad",
    "ModelLoad",
    "RequestEvent",
    "Work",
    "decode_answer",
    "decode_cache_store",
    "decode_event",
    "decode_host",
    "decode_load",
    "decode_work",
]
