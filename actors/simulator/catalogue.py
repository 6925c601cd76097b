"""What a simulated host knows about a model: name, digest, size, details, capabilities."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["ModelInfo", "canonical_name", "describe"]

_PARAMS = re.compile(r"^(\d+(?:\.\d+)?)([mb])$")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as `/api/tags`, `/api/show` and `/api/ps` describe it."""

    name: str
    digest: str
    size: int
    family: str
    families: tuple[str, ...]
    parameter_size: str
    quantization_level: str
    context_length: int
    embedding_length: int
    capabilities: tuple[str, ...]
    modified_at: str = "2026-01-15T09:30:00Z"

    @property
    def completes(self) -> bool:
        return "completion" in self.capabilities

    @property
    def thinks(self) -> bool:
        return "thinking" in self.capabilities

    @property
    def calls_tools(self) -> bool:
        return "tools" in self.capabilities

    @property
    def sees(self) -> bool:
        return "vision" in self.capabilities

    def details(self) -> dict[str, object]:
        """Return the `details` object of `/api/tags`, `/api/ps` and `/api/show`."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


_CHAT = ("completion", "tools")
_THINK = ("completion", "tools", "thinking")
_REASON = ("completion", "thinking")
_EMBED = ("embedding",)

# name -> (family, parameter size, quantization, bytes, context, embedding length, caps).
# Figures are those `ollama show` gives for the library models, rounded; other names are
# derived from their spelling by `describe`.
_KNOWN: dict[str, tuple[str, str, str, int, int, int, tuple[str, ...]]] = {
    "llama3.2:3b": ("llama", "3.2B", "Q4_K_M", 2019393189, 131072, 3072, _CHAT),
    "llama3.2:1b": ("llama", "1.2B", "Q8_0", 1321098329, 131072, 2048, _CHAT),
    "llama3.1:8b": ("llama", "8.0B", "Q4_K_M", 4920753328, 131072, 4096, _CHAT),
    "qwen2.5:7b": ("qwen2", "7.6B", "Q4_K_M", 4683087332, 32768, 3584, _CHAT),
    "qwen2.5:0.5b": ("qwen2", "494.03M", "Q4_K_M", 397821319, 32768, 896, _CHAT),
    "qwen3:8b": ("qwen3", "8.2B", "Q4_K_M", 5225388164, 40960, 4096, _THINK),
    "deepseek-r1:7b": ("qwen2", "7.6B", "Q4_K_M", 4683075271, 131072, 3584, _REASON),
    "llava:7b": ("llama", "7B", "Q4_0", 4733363377, 32768, 4096, ("completion", "vision")),
    "nomic-embed-text:latest": ("nomic-bert", "137M", "F16", 274302450, 2048, 768, _EMBED),
    "all-minilm:latest": ("bert", "23M", "F16", 45960996, 512, 384, _EMBED),
    "mxbai-embed-large:latest": ("bert", "334M", "F16", 669615493, 512, 1024, _EMBED),
}


def canonical_name(name: str) -> str:
    """Spell `name` as Ollama stores it: lower case, `:latest` when no tag is given."""
    name = name.strip().lower()
    if name.startswith("registry.ollama.ai/library/"):
        name = name.removeprefix("registry.ollama.ai/library/")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _capabilities(base: str) -> tuple[str, ...]:
    if any(k in base for k in ("embed", "minilm", "bge")):
        return ("embedding",)
    caps = ["completion"]
    if any(k in base for k in ("llava", "vision", "-vl", "moondream")):
        caps.append("vision")
    if any(k in base for k in ("qwen3", "-r1", "gpt-oss", "think", "magistral")):
        caps.append("thinking")
    return tuple(caps)


def describe(name: str) -> ModelInfo:
    """Describe `name`: a known library model, or one derived from how it is spelled."""
    full = canonical_name(name)
    digest = hashlib.sha256(full.encode()).hexdigest()
    known = _KNOWN.get(full)
    if known is not None:
        family, params, quant, size, context, embedding, caps = known
    else:
        base, tag = full.rsplit(":", 1)
        base = base.rsplit("/", 1)[-1]
        caps = _capabilities(base)
        count = 7e9
        for part in tag.split("-"):
            if m := _PARAMS.match(part):
                count = float(m[1]) * (1e6 if m[2] == "m" else 1e9)
                break
        embeds = caps == ("embedding",)
        if embeds and count == 7e9:
            count = 137e6
        letters = re.match(r"[a-z]+(?:-[a-z]+)*", base)
        family = letters[0] if letters else base
        params = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:g}M"
        quant = "F16" if embeds else "Q4_K_M"
        size = int(count * (2.0 if embeds else 0.6))
        context = 2048 if embeds else 8192
        embedding = 768 if embeds else 4096
    families = (family, "clip") if "vision" in caps else (family,)
    return ModelInfo(
        name=full,
        digest=digest,
        size=size,
        family=family,
        families=families,
        parameter_size=params,
        quantization_level=quant,
        context_length=context,
        embedding_length=embedding,
        capabilities=caps,
    )
