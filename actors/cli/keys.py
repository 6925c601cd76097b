"""`ollamesh keys create|list|revoke`: the HTTP gateway's API keys, through any gateway
that has a database."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from bus.client import Client
from schemas.keys import KeyInfo

__all__ = ["keys", "register"]


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _limits(key: KeyInfo) -> str:
    rpm = "-" if key.rpm is None else f"{key.rpm:,}"
    tpm = "-" if key.tpm is None else f"{key.tpm:,}"
    return f"rpm {rpm}, tpm {tpm}"


def _describe(key: KeyInfo) -> str:
    models = ", ".join(key.models) if key.models else "all"
    rights = "admin" if key.admin else "no admin routes"
    return (f"API key {key.key_id} {key.name!r} ({key.prefix}...): {_limits(key)},"
            f" models {models}, {rights}")  # fmt: skip


async def keys(args: argparse.Namespace) -> int:
    """Run the `keys` verb asked for."""
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        if args.verb == "create":
            made = await client.keys.create(
                args.name, rpm=args.rpm, tpm=args.tpm, models=args.model or None,
                admin=args.admin,
            )  # fmt: skip
            # The secret alone on stdout (KEY=$(ollamesh keys create ci) keeps just it);
            # what it is, and that it is shown this once, on stderr.
            print(f"created {_describe(made.key)}", file=sys.stderr)
            print(made.secret, flush=True)
            print(
                "This is the only time the secret is shown: it cannot be shown again"
                " (only its digest is stored). Keep it now.",
                file=sys.stderr,
            )
        elif args.verb == "list":
            _table(await client.keys.list(revoked=not args.active))
        else:
            key = await client.keys.revoke(args.key_id)
            print(f"revoked API key {key.key_id} {key.name!r} at {_when(key.revoked_at)}")
    return 0


def _table(found: list[KeyInfo]) -> None:
    """The keys, one row each: never a secret, nor its digest."""
    table = Table(title=f"API keys ({len(found)})", title_justify="left")
    for column in ("id", "name", "prefix"):
        table.add_column(column, no_wrap=True)
    for column in ("rpm", "tpm"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("models", overflow="fold")
    table.add_column("admin", no_wrap=True)
    for column in ("created", "revoked", "last used"):
        table.add_column(column, no_wrap=True)
    for k in found:
        table.add_row(
            k.key_id, k.name, k.prefix, "-" if k.rpm is None else f"{k.rpm:,}",
            "-" if k.tpm is None else f"{k.tpm:,}", ", ".join(k.models) if k.models else "all",
            "yes" if k.admin else "no", _when(k.created_at), _when(k.revoked_at),
            _when(k.last_used_at),
        )  # fmt: skip
    # Not cut to a pipe's 80 columns: ids and prefixes are copied from here.
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add `keys` and its verbs; `run` runs the chosen verb's coroutine."""
    p = sub.add_parser("keys", help="the HTTP gateway's API keys: create, list, revoke")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", help="a new key; its secret is printed once, never again")
    c.add_argument("name", help="what the key is for, e.g. ci or open-webui")
    c.add_argument("--rpm", type=int, help="its requests per minute (default: no limit)")
    c.add_argument("--tpm", type=int, help="its tokens per minute (default: no limit)")
    c.add_argument(
        "--model", action="append", default=[],
        help="a model or role it may use (again for more; default: every model)",
    )  # fmt: skip
    c.add_argument("--admin", action="store_true", help="it may use admin routes (pull, delete)")
    ls = verbs.add_parser("list", help="every key, newest first (no secrets)")
    ls.add_argument("--active", action="store_true", help="only the keys not revoked")
    rv = verbs.add_parser("revoke", help="revoke a key on every gateway at once")
    rv.add_argument("key_id")
    for verb in (c, ls, rv):
        bus_args(verb)
        verb.set_defaults(func=run)
