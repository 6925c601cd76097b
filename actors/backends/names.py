"""A host's own model ids and the fleet's names for them (`[models] aliases`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bus.subjects import canonical_model

__all__ = ["ModelNames"]


class ModelNames:
    """Translates one host's model ids to the fleet's names and back.

    An id with an alias takes the alias's name; any other takes its own, with Ollama's
    `:latest` tag when it has none (`tiny.gguf` is `tiny.gguf:latest`), so the router's
    full names find it. The way back is what the host listed last.
    """

    def __init__(self, aliases: Mapping[str, str]) -> None:
        self._aliases = {own: canonical_model(name) for own, name in aliases.items()}
        self._own: dict[str, str] = {}

    def fleet(self, own: str) -> str:
        return self._aliases.get(own) or canonical_model(own)

    def learn(self, owns: Iterable[str]) -> list[str]:
        """The fleet's names for the ids a host lists now; remembered for `own`."""
        self._own = {self.fleet(own): own for own in owns}
        return list(self._own)

    def own(self, name: str) -> str:
        """The host's id for the fleet's `name` (the name itself if the host never listed it)."""
        return self._own.get(name, name)
