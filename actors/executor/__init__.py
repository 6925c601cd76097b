"""The executor actor: one per model host, serving the work of the models it has."""

from actors.executor.executor import Executor

__all__ = ["Executor"]
