"""Python client for hmac-agent: HMAC with keys the agent holds.

A drop-in for ``cryptography.hazmat.primitives.hmac.HMAC`` where the key is
a name, not bytes::

    from cryptography.hazmat.primitives import hashes
    from hmac_agent import HMAC

    h = HMAC("webhook", hashes.SHA256())
    h.update(body)
    h.verify(signature)   # raises cryptography's InvalidSignature

Pure standard library; talks the protocol in docs/protocol.md over the
agent's Unix socket ($HMAC_AGENT_SOCK).
"""

from ._agent import Agent, default_agent, default_socket_path
from ._hmac import HMAC
from .errors import (
    AgentError,
    AgentNotRunning,
    AlreadyFinalized,
    ConnectionLost,
    ContextLost,
    InvalidSignature,
    KeyExists,
    KeyNotFound,
    PermissionDenied,
    Unavailable,
    UnsupportedAlgorithm,
    UntrustedAgent,
)

__all__ = [
    "HMAC",
    "Agent",
    "default_agent",
    "default_socket_path",
    "AgentError",
    "AgentNotRunning",
    "AlreadyFinalized",
    "ConnectionLost",
    "ContextLost",
    "InvalidSignature",
    "KeyExists",
    "KeyNotFound",
    "PermissionDenied",
    "Unavailable",
    "UnsupportedAlgorithm",
    "UntrustedAgent",
]

__version__ = "0.1.0"
