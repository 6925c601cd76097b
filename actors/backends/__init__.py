"""Clients of the model hosts, shared by the actors that talk to them (the executor
generates, the health monitor checks and manages models): Ollama's HTTP API, and the
per-model options ollamesh sends."""
