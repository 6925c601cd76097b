"""The actors `ollamesh up` runs, by name (each is `actors/<name>` or `actors/<name>.py`).

Apart from the supervisor, so the command line can name them without importing them.
"""

__all__ = ["ACTORS", "DATABASE_ACTORS"]

ACTORS = (
    "router", "executor", "recorder", "cache", "prompts", "health", "reasoning", "construction",
)  # fmt: skip
# Those that keep state in Postgres.
DATABASE_ACTORS = frozenset({"recorder", "cache", "prompts", "reasoning", "construction"})
