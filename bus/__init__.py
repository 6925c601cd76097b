"""Everything NATS: connections, subjects, provisioning, the actor runtime, the client SDK."""

from bus.actor import Actor
from bus.client import ChunkStream, Client
from bus.config import Config, load_config
from bus.connection import connect
from bus.credentials import Credentials
from bus.errors import (
    BadRequest,
    Cancelled,
    Internal,
    ModelNotFound,
    NoHealthyHost,
    OllameshError,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Refused,
    Timeout,
    Unavailable,
    UpstreamError,
)
from bus.provision import provision
from bus.registry import HostRegistry
from bus.server import EmbeddedNats
from bus.subjects import Subjects, model_from_token, model_token

__all__ = [
    "Actor",
    "BadRequest",
    "Cancelled",
    "ChunkStream",
    "Client",
    "Config",
    "Credentials",
    "EmbeddedNats",
    "HostRegistry",
    "Internal",
    "ModelNotFound",
    "NoHealthyHost",
    "OllameshError",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "Refused",
    "Subjects",
    "Timeout",
    "Unavailable",
    "UpstreamError",
    "connect",
    "load_config",
    "model_from_token",
    "model_token",
    "provision",
]
