"""The router actor and everything only it uses: admission, model choice, limits, queues,
the cache and single-flight, prompt templates, deadlines of queued work."""

from actors.router.router import Router

__all__ = ["Router"]
