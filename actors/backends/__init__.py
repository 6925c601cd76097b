"""Clients of the model hosts, shared by the actors that talk to them (the executor
generates, the health monitor checks and manages models): one backend per kind of host
(Ollama's native API, an OpenAI-compatible engine's; `kinds`), model names both ways,
and the per-model options ollamesh sends."""
