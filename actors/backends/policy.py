"""What the configuration fixes per model: load-time options, pinning and warming."""

from __future__ import annotations

from typing import Any

import msgspec

from bus.config import Config
from bus.subjects import canonical_model
from schemas import Options

__all__ = ["FOREVER", "ModelPolicy"]

# Ollama's keep_alive for "never unload".
FOREVER = -1


class ModelPolicy:
    """Per-model settings from `load_options` and `health.pin`, with roles resolved.

    A setting named by model wins over one named by the model's role. Models are looked
    up by their full names (`llama3` is `llama3:latest`).
    """

    def __init__(self, config: Config) -> None:
        roles = config.roles

        def model(name: str) -> str:
            return canonical_model(roles.get(name, name))

        self._pinned = {model(name) for name in config.health.pin}
        self._warm = {model(name) for name in config.health.warm}
        self._options: dict[str, dict[str, int]] = {}
        by_role = [(k, v) for k, v in config.load_options.items() if k in roles]
        by_name = [(k, v) for k, v in config.load_options.items() if k not in roles]
        for name, options in by_role + by_name:
            self._options[model(name)] = msgspec.to_builtins(options)

    @property
    def pinned_models(self) -> set[str]:
        return set(self._pinned)

    @property
    def warm_models(self) -> set[str]:
        """Models to load when a host comes up (`health.warm`)."""
        return set(self._warm)

    def pinned(self, model: str) -> bool:
        return model in self._pinned

    def load_options(self, model: str) -> dict[str, int]:
        """The options a change of which would make Ollama reload `model`."""
        return dict(self._options.get(model, {}))

    def options(self, model: str, asked: Options | None) -> Options | None:
        """The client's options with the model's load-time options imposed."""
        fixed = self._options.get(model)
        if not fixed:
            return asked
        if asked is None:
            return msgspec.convert(fixed, Options)
        return msgspec.structs.replace(asked, **fixed)

    def keep_alive(self, model: str, asked: Any) -> Any:
        """A pinned model stays loaded whatever a request asks; others keep the client's."""
        return FOREVER if model in self._pinned else asked
