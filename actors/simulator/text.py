"""Deterministic model output: answer tokens, JSON that fits a schema, embeddings, counts."""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any

import msgspec

__all__ = ["VOCABULARY", "Sampler", "count_tokens", "embedding", "split_json"]

VOCABULARY: tuple[str, ...] = tuple(
    """
    the a an this that these each every some many few all one two three four five seven ten
    is are was were be been will can could should must may might not and or but so because
    if when while then than with without for from to of in on at by over under between about
    model answer question data system network service request stream token message result
    value state error retry host queue worker router signal cluster node server client cache
    latency throughput deadline timeout budget window batch record event log metric trace
    sky blue light water river mountain forest city road bridge tower garden field stone
    wind rain cloud sun moon star night morning evening winter summer spring autumn season
    people team engineer teacher doctor writer reader student friend family neighbour crew
    make take give find keep hold build check move carry send read write start stop open
    close learn teach explain measure compare choose follow change improve protect share
    quick slow bright dark warm cold simple clear careful steady quiet strong gentle small
    large early late new old first last next ready safe useful common rare whole
    well often never always rather quite almost soon still again together perhaps indeed
    """.split()  # noqa: SIM905 - a word list reads best as prose
)

_N = len(VOCABULARY)
_INDICES = range(_N)
# Every word in the six shapes a token can take, built once: a stream emits table lookups.
_MID = tuple(" " + w for w in VOCABULARY)
_MID_END = tuple(" " + w + "." for w in VOCABULARY)
_CAP = tuple(" " + w.capitalize() for w in VOCABULARY)
_CAP_END = tuple(" " + w.capitalize() + "." for w in VOCABULARY)
_FIRST = tuple(w.capitalize() for w in VOCABULARY)
_FIRST_END = tuple(w.capitalize() + "." for w in VOCABULARY)

_JSON_PIECE = re.compile(r'\s*(?:"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:"]+)')


def count_tokens(text: str) -> int:
    """Count roughly the tokens a real tokenizer makes of `text` (four characters each)."""
    return (len(text) + 3) // 4


def _seed(model: str, key: bytes, seed: object) -> int:
    digest = hashlib.blake2b(
        b"%s\0%s\0%s" % (model.encode(), str(seed).encode(), key), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


class Sampler:
    """The choices of one answer: the same model, input and seed always choose the same.

    Without a seed the answer varies between calls, as with a real model at a non-zero
    temperature; `temperature` 0 makes it repeat even without a seed.
    """

    __slots__ = ("_rng",)

    def __init__(
        self, model: str, key: bytes, seed: int | None = None, temperature: float | None = None
    ) -> None:
        if seed is None:
            seed = 0 if temperature == 0 else random.getrandbits(63)
        self._rng = random.Random(_seed(model, key, seed))

    def answer(self, limit: int | None = None) -> list[str]:
        """Choose the tokens of the answer: 8-48 of them, or exactly `limit` when given.

        A limit shorter than the natural length yields a prefix of the same answer.
        """
        rng = self._rng
        natural = rng.randint(8, 48)
        n = natural if limit is None or limit < 0 else limit
        picks = rng.choices(_INDICES, k=n)
        tokens: list[str] = []
        capital = True
        for pos, i in enumerate(picks):
            # Sentences end on about one word in six, and always at a natural end.
            end = i % 6 == 5 or (pos == n - 1 and n == natural)
            if pos == 0:
                tokens.append(_FIRST_END[i] if end else _FIRST[i])
            elif capital:
                tokens.append(_CAP_END[i] if end else _CAP[i])
            else:
                tokens.append(_MID_END[i] if end else _MID[i])
            capital = end
        return tokens

    def thoughts(self) -> list[str]:
        """Choose what a thinking model thinks before it answers: 6-16 tokens."""
        return self.answer(self._rng.randint(6, 16))

    def tool_call(self, tools: list[Any]) -> dict[str, Any]:
        """Choose one of `tools` (OpenAI-style function specs) and arguments that satisfy
        its `parameters` schema: `{"function": {"name", "arguments"}}`."""
        rng = self._rng
        spec = rng.choice(tools).get("function") or {}
        params = spec.get("parameters")
        arguments = _value(rng, params, params, 0) if isinstance(params, dict) else {}
        if not isinstance(arguments, dict):
            arguments = {}
        return {"function": {"name": spec.get("name", ""), "arguments": arguments}}

    def json_text(self, fmt: object) -> str:
        """Write a JSON document for `format`: `"json"`, or a JSON schema to satisfy."""
        rng = self._rng
        if isinstance(fmt, dict):
            doc = _value(rng, fmt, fmt, 0)
        else:
            words = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(2, 6)))
            doc = {"answer": words, "confidence": round(rng.random(), 2)}
        return msgspec.json.format(msgspec.json.encode(doc), indent=0).decode()


def split_json(text: str) -> list[str]:
    """Cut `text` into token-sized pieces that join back to exactly `text`."""
    pieces = _JSON_PIECE.findall(text)
    return pieces if "".join(pieces) == text else [text[i : i + 4] for i in range(0, len(text), 4)]


def _resolve(ref: str, root: dict[str, Any]) -> object:
    node: object = root
    for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else []:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _bound(spec: dict[str, Any], keys: tuple[str, str], default: float) -> float:
    for key in keys:
        value = spec.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return default


def _value(rng: random.Random, spec: object, root: dict[str, Any], depth: int) -> object:
    """Make a value that satisfies the JSON schema `spec` (the subset models get asked)."""
    if not isinstance(spec, dict) or depth > 8:
        return rng.choice(VOCABULARY)
    if isinstance(spec.get("$ref"), str):
        return _value(rng, _resolve(spec["$ref"], root), root, depth + 1)
    if "const" in spec:
        return spec["const"]
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return rng.choice(spec["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        options = spec.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _value(rng, (usable or options)[0], root, depth + 1)
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in spec else "array" if "items" in spec else "string"
    if kind == "object":
        props = spec.get("properties")
        if not isinstance(props, dict):
            return {}
        return {name: _value(rng, sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        low = int(spec.get("minItems", 1))
        high = max(low, min(int(spec.get("maxItems", 3)), 3))
        items = spec.get("items")
        return [_value(rng, items, root, depth + 1) for _ in range(rng.randint(low, high))]
    if kind in ("integer", "number"):
        least = _bound(spec, ("minimum", "exclusiveMinimum"), 0.0)
        most = _bound(spec, ("maximum", "exclusiveMaximum"), least + 100)
        if kind == "integer":
            return rng.randint(math.ceil(least), max(math.ceil(least), math.floor(most)))
        return round(rng.uniform(least, most), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if spec.get("format") == "date-time":
        return "2026-01-15T09:30:00Z"
    if spec.get("format") == "date":
        return "2026-01-15"
    text = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 3)))
    max_len = spec.get("maxLength")
    return text[:max_len] if isinstance(max_len, int) and max_len > 0 else text


def embedding(model: str, text: str, dimensions: int) -> list[float]:
    """Make a unit vector that depends only on the model and the text."""
    rng = random.Random(_seed(model, text.encode(), "embed"))
    draw = rng.random
    vector = [draw() - 0.5 for _ in range(dimensions)]
    norm = math.sqrt(math.fsum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
