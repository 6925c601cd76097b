"""The wire contract: exported names, tags, field names, codes, subject tokens."""

from __future__ import annotations

import msgspec
import pytest

import bus
import bus.config
import schemas
import schemas.cache
import schemas.fleet
import schemas.keys
import schemas.reasoning
import schemas.replies
import schemas.requests
import schemas.templates
import schemas.work
from bus.errors import Cancelled, OllameshError, Timeout, UpstreamError, error_from_wire
from bus.subjects import Subjects, model_from_token, model_token
from schemas import (
    Accepted,
    ChatRequest,
    Chunk,
    Done,
    Error,
    GenerateRequest,
    Kind,
    decode_reply,
    decode_request,
    decode_stream,
    encode,
    internal,
)


def test_schemas_exports_are_the_contract() -> None:
    """Changing what `schemas` exports is a visible decision."""
    assert sorted(schemas.__all__) == sorted(
        [
            "REQUEST_TYPES", "ROUTING_FIELDS", "Accepted", "CacheMode", "ChatRequest",
            "ChatResult", "Chunk", "Done", "EmbedRequest", "EmbedResult", "Error", "ErrorCode",
            "Figures", "FleetStats", "GenerateRequest", "GenerateResult", "Kind",
            "Message", "Name", "Options", "Priority", "QueueDepth", "QueueStats", "ReasonResult", "RecorderState", "Reply",
            "Request", "Result", "Stats", "StatsRow", "StreamMessage", "ToolCall",
            "ToolCallFunction", "decode_reply", "decode_request", "decode_stream",
            "encode", "http_status", "is_retryable", "without_routing",
        ]
    )  # fmt: skip


def test_internal_messages_are_apart_from_the_contract() -> None:
    """Work items, the registry, the load board, events and cache hand-overs are ollamesh's
    own: exported by `schemas.internal`, none of them by `schemas`."""
    assert sorted(internal.__all__) == sorted(
        [
            "Answer", "CacheStore", "ChainWork", "HostInfo", "HostLoad", "ModelLoad", "RequestEvent", "Work",
            "decode_answer", "decode_cache_store", "decode_event", "decode_host", "decode_load",
            "decode_work",
        ]
    )  # fmt: skip
    assert not set(internal.__all__) & set(schemas.__all__)


def test_bus_exports_are_the_contract() -> None:
    """Changing what `bus` exports is a visible decision."""
    assert sorted(bus.__all__) == sorted(
        [
            "Actor", "BadRequest", "Cancelled", "ChunkStream", "Client", "Config",
            "Credentials", "EmbeddedNats", "HostRegistry", "Internal", "ModelNotFound",
            "NoHealthyHost", "OllameshError", "Overloaded", "PayloadTooLarge", "RateLimited",
            "Refused", "Subjects", "Timeout", "Unavailable", "UpstreamError", "connect", "load_config",
            "model_from_token", "model_token", "provision",
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["llama3.3:70b", "llama3_3:70b", "org/m:7b", "llama3-3:70b"], id="separators"),
        pytest.param(["a.b", "a_2eb", "a_b", "a__b", "a-b"], id="escape-lookalikes"),
        pytest.param(["modèle:1", "模型/x", "m e"], id="non-ascii-and-space"),
    ],
)
def test_model_tokens_are_injective_and_subject_safe(names: list[str]) -> None:
    """Distinct models get distinct single tokens that round-trip."""
    tokens = [model_token(n) for n in names]
    assert len(set(tokens)) == len(names)
    for name, token in zip(names, tokens, strict=True):
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in token), token
        assert model_from_token(token) == name


def test_subjects_follow_the_prefix() -> None:
    """Every subject and stream name is derived from the configured prefix."""
    s = Subjects("acme")
    assert s.generate == "acme.v1.generate"
    assert s.stream("r1") == "acme.v1.stream.r1"
    assert s.work("llama3.3:70b") == "acme.v1.work.llama3_2e3_3a70b.interactive"
    assert s.work("llama3.3:70b", "batch") == "acme.v1.work.llama3_2e3_3a70b.batch"
    assert s.chunk_stream == "ACME_CHUNKS"
    with pytest.raises(ValueError, match="prefix"):
        Subjects("bad.prefix")


def test_requests_use_ollamas_field_names() -> None:
    """A body written for Ollama's /api/chat decodes, `temperature: 0` included."""
    body = (
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"format":{"type":"object"},'
        b'"options":{"temperature":0,"top_p":0.9,"top_k":40,"repeat_penalty":1.1,"seed":7,'
        b'"num_predict":12,"num_ctx":4096,"stop":["\\n"]},"keep_alive":"5m","stream":false,'
        b'"future_field":1}'
    )
    req = decode_request(Kind.CHAT, body)
    assert isinstance(req, ChatRequest)
    assert req.options is not None and req.options.temperature == 0.0
    assert req.options.stop == ["\n"] and req.format == {"type": "object"}
    assert req.stream is False and req.keep_alive == "5m"
    assert b'"temperature":0.0' in encode(req)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": 3, "prompt": "x"}', id="model-not-string"),
        pytest.param(
            b'{"model": "m", "prompt": "x", "options": {"temperature": -1}}', id="neg-temp"
        ),
        pytest.param(b'{"model": "m", "prompt": "x", "request_id": "a.b"}', id="unsafe-id"),
        pytest.param(b'{"model": "m", "prompt": "x", "deadline_ms": 0}', id="zero-deadline"),
        pytest.param(b'{"type": "chat", "model": "m"}', id="wrong-tag"),
    ],
)
def test_bad_fields_are_rejected_by_the_schema(body: bytes) -> None:
    """Wrong types and out-of-range values fail decoding with a ValidationError."""
    with pytest.raises(msgspec.ValidationError):
        decode_request(Kind.GENERATE, body)


def test_replies_and_stream_messages_are_tagged() -> None:
    """Each message names its type, and the unions dispatch on it."""
    accepted = Accepted(request_id="r", model="m", stream="llm.v1.stream.r")
    assert isinstance(decode_reply(encode(accepted)), Accepted)
    chunk = Chunk(request_id="r", seq=1, text="hi")
    assert msgspec.json.decode(encode(chunk))["type"] == "chunk"
    done = decode_stream(encode(Done(request_id="r", seq=2, eval_count=5, done_reason="stop")))
    assert isinstance(done, Done) and done.eval_count == 5
    assert isinstance(decode_stream(encode(Error(code="timeout", message="x"))), Error)


def test_wire_errors_become_typed_exceptions() -> None:
    """Each code maps to its exception, which also subclasses the builtin callers catch."""
    exc = error_from_wire(Error(code="timeout", message="slow", retryable=True, request_id="r"))
    assert isinstance(exc, Timeout) and isinstance(exc, TimeoutError)
    assert exc.retryable and exc.request_id == "r"
    assert isinstance(error_from_wire(Error(code="cancelled", message="x")), Cancelled)
    assert isinstance(error_from_wire(Error(code="upstream_error", message="x")), UpstreamError)
    future = error_from_wire(Error(code="brand_new_code", message="x"))
    assert type(future) is OllameshError and future.code == "brand_new_code"


def test_generate_request_defaults_to_streaming_like_ollama() -> None:
    """Without `stream`, a request streams, as Ollama's HTTP API does."""
    req = decode_request(Kind.GENERATE, b'{"model":"m","prompt":"x"}')
    assert isinstance(req, GenerateRequest) and req.stream is True


def _structs(module: object) -> list[type[msgspec.Struct]]:
    return [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, msgspec.Struct) and v.__module__ == module.__name__  # type: ignore[attr-defined]
    ]  # fmt: skip


# The management requests: a misspelt field would change what the command does.
MANAGEMENT = {"HealthQuery", "ModelsRequest", "PromptPut", "PromptRef", "PromptList",
              "PromptRender", "Invalidate", "ReasonGet", "ReasonList", "KeyCreate", "KeyList",
              "KeyRevoke"}  # fmt: skip


def test_only_management_requests_reject_unknown_fields() -> None:
    """Inference requests, replies and internal messages take a newer writer's extra
    fields; management requests refuse them."""
    modules = [schemas.requests, schemas.replies, schemas.fleet, schemas.templates,
               schemas.cache, schemas.work, schemas.reasoning, schemas.keys]  # fmt: skip
    structs = [s for m in modules for s in _structs(m)]
    forbidding = {s.__name__ for s in structs if s.__struct_config__.forbid_unknown_fields}
    assert forbidding == MANAGEMENT


def test_configuration_rejects_unknown_fields() -> None:
    """Every configuration section rejects a setting it does not know (a typo)."""
    structs = _structs(bus.config)
    assert structs
    assert [s.__name__ for s in structs if not s.__struct_config__.forbid_unknown_fields] == []
