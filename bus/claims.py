"""Who ends a request that has a deadline: the first to claim it, atomically.

A queued request whose deadline passes is ended by the router that accepted it, at the
deadline, so its client never waits longer; one already taken is ended by its executor
(which stops at the deadline too). Both claim the request in a key-value bucket with an
atomic create before ending or starting it, so exactly one of them does.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["ROUTER", "Claims"]

# The router's mark; an executor claims with its own id.
ROUTER = "router"


class Claims:
    """Claims on requests, in the claims bucket (entries expire with its TTL)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def claim(self, request_id: str, holder: str) -> str:
        """Claim `request_id` for `holder`; return who holds it (`holder` if it was free)."""
        for _ in range(3):  # a claim may expire between the failed create and the read
            try:
                await self._kv.create(request_id, holder.encode())
                return holder
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(request_id)
            except KeyNotFoundError:
                continue
            return (entry.value or b"").decode()
        return holder
