"""The executor actor: one per Ollama host."""

from actors.executor.executor import Executor
from actors.executor.ollama import HostUnavailable, OllamaHost, StreamTimeouts

__all__ = ["Executor", "HostUnavailable", "OllamaHost", "StreamTimeouts"]
