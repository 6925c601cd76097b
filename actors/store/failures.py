"""What a failed write of events says: wait for the store, set the event aside, or a fault.

Policy only, no I/O, so it is tested without a server. Three answers:

- `OUTAGE`: Postgres (or the bus) is unreachable, restarting, shutting down or out of
  connections; the same write succeeds later, so the batch waits and is retried.
- `REFUSED`: the store refused what one event carries (a NUL in a text, a number out of
  range, a key the bucket does not take); retrying never helps, so the event is set aside.
- `FAULT`: neither, e.g. a table missing or a bug of ours. Setting events aside would
  empty the stream into the dead letters, and waiting would hide it, so the loop crashes
  (its supervisor logs, counts and restarts it) and the events wait in the stream.
"""

from __future__ import annotations

import enum

import asyncpg
import msgspec
import nats.errors
import nats.js.errors

__all__ = ["BROKEN", "Verdict", "reason", "verdict"]

# SQLSTATE classes (the first two characters) and codes of a store that is not there,
# not yet, or too busy: connection exceptions, transaction rollbacks (serialization,
# deadlock), insufficient resources (too many connections, disk full), operator
# intervention (shutdown, cannot connect now, statement cancelled), system errors.
_OUTAGE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Invalid authorization and a database that does not exist (yet) only happen at connect;
# read-only transaction: a standby during a failover; lock not available, object in use.
_OUTAGE_CODES = frozenset({"28000", "28P01", "3D000", "25006", "55P03", "55006"})
# Data exceptions (22021: a NUL or invalid UTF-8 in a text), integrity constraint
# violations, cardinality violations, program limits (a row or index entry too large):
# each about what a row holds.
_REFUSED_CLASSES = frozenset({"21", "22", "23", "54"})

# Refused for what they hold, with no SQLSTATE to tell: by msgspec, an event it cannot
# decode; by the bus, a key or a size it does not take. (An argument asyncpg cannot
# encode, an int over int32, is its DataError, SQLSTATE 22000: a data exception.)
_REFUSED_TYPES = (
    msgspec.DecodeError,
    nats.js.errors.InvalidKeyError,
    nats.errors.MaxPayloadError,
    nats.js.errors.BadRequestError,
)
# A connection asyncpg can no longer use; a new one works.
BROKEN = (asyncpg.InterfaceError, asyncpg.InternalClientError)
# A long reason is cut here: the dead letter keeps the payload itself.
_REASON_MAX = 500


class Verdict(enum.Enum):
    """What to do with the events whose write raised."""

    OUTAGE = "outage"
    REFUSED = "refused"
    FAULT = "fault"


def verdict(exc: BaseException) -> Verdict:
    """Classify the exception a write of events raised."""
    if isinstance(exc, _REFUSED_TYPES):
        return Verdict.REFUSED
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state in _OUTAGE_CODES or state[:2] in _OUTAGE_CLASSES:
            return Verdict.OUTAGE
        if state[:2] in _REFUSED_CLASSES:
            return Verdict.REFUSED
        return Verdict.FAULT
    # OSError: refused or reset connections; TimeoutError: a pool acquire or a command
    # timing out (nats-py's TimeoutError is one); asyncpg's InternalClientError: a query
    # on a connection the server has just ended (its FATAL read, the socket not closed
    # yet: "cannot switch to state 12; another operation (2) is in progress"); the rest
    # of nats-py: the bus is away.
    if isinstance(exc, (OSError, TimeoutError, *BROKEN, nats.errors.Error)):
        return Verdict.OUTAGE
    return Verdict.FAULT


def reason(exc: BaseException) -> str:
    """One line saying why, with the SQLSTATE when Postgres gave one; safe to store as text."""
    state = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    name = type(exc).__name__ + (f" [{state}]" if state else "")
    text = f"{name}: {exc}" if str(exc) else name
    # Postgres takes no NUL in a text column: an error quoting the content could carry one.
    return text.replace("\x00", "\\x00").replace("\n", " ")[:_REASON_MAX]
