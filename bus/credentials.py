"""Who a connection is to NATS: a creds file, an nkey seed, a user and password, a token.

Every connection ollamesh opens (`ollamesh up`, the SDK's `Client`, the command line)
takes its credentials from here: `[nats.auth]` in the configuration file, or the
environment variables NATS tools read (`NATS_CREDS`, `NATS_NKEY`, `NATS_USER` with
`NATS_PASSWORD`, `NATS_TOKEN`). Give one kind; with none, the connection names nobody
(the embedded server then treats it as its local user, with every right).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msgspec import Struct

from bus.errors import Refused

__all__ = ["ENVIRONMENT", "Credentials", "from_environment"]

# Each field's environment variable.
ENVIRONMENT = {
    "creds": "NATS_CREDS",
    "nkey": "NATS_NKEY",
    "user": "NATS_USER",
    "password": "NATS_PASSWORD",
    "token": "NATS_TOKEN",
}


class Credentials(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """How a connection proves who it is; every field unset: it names nobody."""

    # A creds file (a user's JWT and its nkey seed, as `nsc` writes them).
    creds: str | None = None
    # A file holding an nkey seed (`SU...`), for a user the server names by its public key.
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        # Never a password or a token in a log line or a traceback.
        shown = {"creds": self.creds, "nkey": self.nkey, "user": self.user}
        fields = ", ".join(f"{k}={v!r}" for k, v in shown.items() if v is not None)
        secret = ", password=..." if self.password else ""
        return f"Credentials({fields}{secret}{', token=...' if self.token else ''})"

    def describe(self) -> str:
        """Who these credentials say the connection is, for a message to a person."""
        if self.creds:
            return f"the credentials in {self.creds}"
        if self.nkey:
            return f"the nkey in {self.nkey}"
        if self.user:
            return f"user {self.user!r}"
        if self.token:
            return "the token given"
        return "a connection without credentials"

    def options(self) -> dict[str, Any]:
        """nats-py's `connect` arguments for these credentials.

        Raises `Refused` when a file named here cannot be read: nats-py would otherwise
        fail on it at every reconnection, with a traceback.
        """
        for what, path in (("NATS_CREDS", self.creds), ("NATS_NKEY", self.nkey)):
            if path is None:
                continue
            try:
                Path(path).read_bytes()
            except OSError as exc:
                raise Refused(f"{what} names {path}, which cannot be read: {exc.strerror}") from exc
        given = {
            "user_credentials": self.creds,
            "nkeys_seed": self.nkey,
            "user": self.user,
            "password": self.password,
            "token": self.token,
        }
        return {k: v for k, v in given.items() if v is not None}


def from_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The credentials the environment gives, as `[nats.auth]`'s fields (empty ones left out)."""
    return {field: env[name] for field, name in ENVIRONMENT.items() if env.get(name)}
