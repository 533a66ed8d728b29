"""Exceptions.

When pyca/cryptography is importable, ``AlreadyFinalized``,
``InvalidSignature`` and ``UnsupportedAlgorithm`` are its own classes, so
existing ``except`` clauses keep working; otherwise classes of the same
names are defined here.
"""

from ._wire import ERROR_CODES

try:  # pragma: no cover - depends on the environment
    from cryptography.exceptions import AlreadyFinalized, InvalidSignature, UnsupportedAlgorithm
except ImportError:  # pragma: no cover

    class AlreadyFinalized(Exception):
        """The context was already finalized."""

    class InvalidSignature(Exception):
        """The signature did not match the digest."""

    class UnsupportedAlgorithm(Exception):
        """The algorithm is unknown, or the key's provider cannot do it."""

        def __init__(self, message, reason=None):
            super().__init__(message)
            self._reason = reason


class AgentError(Exception):
    """An error reported by the agent, or in reaching it.

    ``code`` is the protocol's error code (docs/protocol.md), or None for
    errors of the connection itself.
    """

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class AgentNotRunning(AgentError):
    """Nothing listens at the socket path; the message names it."""


class UntrustedAgent(AgentError):
    """The process listening at the socket path runs as a user the client
    does not trust (not root, not this user, not $HMAC_AGENT_UID or the
    Agent's ``agent_uid``); nothing was sent to it. The message names the
    path and the uid."""


class ConnectionLost(AgentError):
    """The connection to the agent broke."""


class KeyNotFound(AgentError):
    """No key has that name."""


class PermissionDenied(AgentError):
    """The caller may not do this with this key."""


class ContextLost(AgentError):
    """The context's state was lost (the agent or its device restarted)."""


class KeyExists(AgentError):
    """A key with that name exists already."""


class Unavailable(AgentError):
    """The key's provider cannot serve now (its device is gone, stalled or
    restarting); the message names the provider. A later call may succeed."""


# Exceptions by the protocol's error name; the other codes raise AgentError.
_BY_NAME = {
    "already_finalized": AlreadyFinalized,
    "invalid_signature": InvalidSignature,
    "unsupported_algorithm": UnsupportedAlgorithm,
    "key_not_found": KeyNotFound,
    "permission_denied": PermissionDenied,
    "key_exists": KeyExists,
    "unavailable": Unavailable,
    "context_lost": ContextLost,
}

_BY_CODE = {ERROR_CODES[name]: cls for name, cls in _BY_NAME.items()}


def from_code(code, message):
    """The exception for an ERROR reply."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return AgentError(message, code)
    if cls in (AlreadyFinalized, InvalidSignature, UnsupportedAlgorithm):
        return cls(message)
    return cls(message, code)
