"""The actors `ollamesh up` runs, by name (each is `actors/<name>` or `actors/<name>.py`).

Apart from the supervisor, so the command line can name them without importing them.
"""

__all__ = ["ACTORS", "DATABASE_ACTORS", "DEFAULT_ACTORS"]

ACTORS = (
    "router", "executor", "recorder", "cache", "prompts", "health", "reasoning", "construction",
    "gateway",
)  # fmt: skip
# What `ollamesh up` runs when told nothing: every actor, the HTTP gateway included.
DEFAULT_ACTORS = ACTORS
# Those that keep state in Postgres.
DATABASE_ACTORS = frozenset({"recorder", "cache", "prompts", "reasoning", "construction"})
