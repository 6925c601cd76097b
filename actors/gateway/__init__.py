"""The HTTP gateway actor (`--actors gateway`): Ollama's API in front of the fleet."""

from actors.gateway.gateway import Gateway

__all__ = ["Gateway"]
