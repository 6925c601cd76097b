"""Encoders and decoders, built once; everything on the wire is msgspec JSON."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.replies import Reply, StreamMessage
from schemas.requests import ChatRequest, EmbedRequest, GenerateRequest, Kind
from schemas.work import Answer, CacheStore, HostInfo, HostLoad, RequestEvent, Work

__all__ = [
    "REQUEST_TYPES",
    "decode_answer",
    "decode_cache_store",
    "decode_event",
    "decode_host",
    "decode_load",
    "decode_reply",
    "decode_request",
    "decode_stream",
    "decode_work",
    "encode",
]

REQUEST_TYPES: dict[Kind, type[GenerateRequest | ChatRequest | EmbedRequest]] = {
    Kind.GENERATE: GenerateRequest,
    Kind.CHAT: ChatRequest,
    Kind.EMBED: EmbedRequest,
}

_encoder = msgspec.json.Encoder()
_request_decoders = {kind: msgspec.json.Decoder(cls) for kind, cls in REQUEST_TYPES.items()}
_stream_decoder = msgspec.json.Decoder(StreamMessage)
_reply_decoder = msgspec.json.Decoder(Reply)
_work_decoder = msgspec.json.Decoder(Work)
_host_decoder = msgspec.json.Decoder(HostInfo)
_event_decoder = msgspec.json.Decoder(RequestEvent)
_load_decoder = msgspec.json.Decoder(HostLoad)
_answer_decoder = msgspec.json.Decoder(Answer)
_cache_store_decoder = msgspec.json.Decoder(CacheStore)


def encode(message: Any) -> bytes:
    """Encode any wire message to JSON bytes."""
    return _encoder.encode(message)


def decode_request(kind: Kind, data: bytes) -> GenerateRequest | ChatRequest | EmbedRequest:
    """Decode a client request of `kind`; raises `msgspec.DecodeError` or `ValidationError`
    (a body nested too deeply to decode included)."""
    try:
        return _request_decoders[kind].decode(data)
    except RecursionError as exc:
        raise msgspec.DecodeError("JSON is nested too deeply") from exc


def decode_stream(data: bytes) -> StreamMessage:
    """Decode a message read from a request's stream subject."""
    message: StreamMessage = _stream_decoder.decode(data)
    return message


def decode_reply(data: bytes) -> Reply:
    """Decode the reply to a generate, chat or embed request."""
    reply: Reply = _reply_decoder.decode(data)
    return reply


def decode_work(data: bytes) -> Work:
    """Decode a queued work item."""
    return _work_decoder.decode(data)


def decode_host(data: bytes) -> HostInfo:
    """Decode a host registry entry."""
    return _host_decoder.decode(data)


def decode_event(data: bytes) -> RequestEvent:
    """Decode a request lifecycle event."""
    return _event_decoder.decode(data)


def decode_load(data: bytes) -> HostLoad:
    """Decode a load board entry."""
    return _load_decoder.decode(data)


def decode_answer(data: bytes) -> Answer:
    """Decode a cached answer."""
    return _answer_decoder.decode(data)


def decode_cache_store(data: bytes) -> CacheStore:
    """Decode an answer handed to the cache."""
    return _cache_store_decoder.decode(data)
