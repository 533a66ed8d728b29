"""HMAC with pyca/cryptography's API and a key held by the agent."""

import struct

from . import _wire
from ._agent import _check_tag, _expect_versioned, default_agent
from .errors import AlreadyFinalized, ConnectionLost, ContextLost, InvalidSignature, UnsupportedAlgorithm

# pyca/cryptography's hash names (HashAlgorithm.name), and the agent's.
# Checked against the agent's table by providers/algorithm_test.go.
_NAMES = {
    "sha1": "sha1",
    "sha224": "sha224",
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
    "sha512-224": "sha512_224",
    "sha512-256": "sha512_256",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
    "md5": "md5",
    "blake2b": "blake2b",
    "blake2s": "blake2s",
    "sm3": "sm3",
}


def _algorithm_name(algorithm):
    """The agent's name for a cryptography hash instance or a name."""
    if isinstance(algorithm, str):
        name = algorithm.lower()
        name = _NAMES.get(name, name)
        if name not in _wire.ALGORITHMS:
            raise UnsupportedAlgorithm("%s is not supported by hmac-agent" % algorithm)
        return name
    if isinstance(algorithm, type):
        raise TypeError("Expected instance of hashes.HashAlgorithm.")
    name = getattr(algorithm, "name", None)
    if not isinstance(name, str):
        raise TypeError("Expected instance of hashes.HashAlgorithm.")
    if name not in _NAMES:
        # Extendable-output functions (SHAKE), and any other hash pyca
        # cannot use in HMAC either.
        raise UnsupportedAlgorithm("%s is not supported for HMAC by hmac-agent" % name)
    agent_name = _NAMES[name]
    size = getattr(algorithm, "digest_size", None)
    if size != _wire.DIGEST_SIZES[agent_name]:
        # BLAKE2 of another size (pyca allows only BLAKE2b(64) and
        # BLAKE2s(32), but a HashAlgorithm of one's own may say otherwise):
        # the agent computes one size, and a tag of another would never
        # verify.
        raise UnsupportedAlgorithm(
            "%s with a %r-byte digest is not supported by hmac-agent (only %d)"
            % (name, size, _wire.DIGEST_SIZES[agent_name])
        )
    return agent_name


def _bytes_like(data, what):
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError("%s must be bytes-like" % what)


class HMAC:
    """HMAC on a key held by hmac-agent, with the API of
    ``cryptography.hazmat.primitives.hmac.HMAC``.

    ``key`` is the key's name in the agent (a str), never key bytes;
    ``algorithm`` is a cryptography hash instance (``hashes.SHA256()``,
    ``hashes.MD5()``, ``hashes.BLAKE2b(64)``, ``hashes.SM3()``, ...) or the
    agent's name for it (``"sha256"``, ``"sha3_256"``, ``"blake2b"``).
    ``backend`` is pyca's old third parameter, accepted and ignored as pyca
    does, so ``HMAC(key, hashes.SHA256(), default_backend())`` runs
    unchanged. ``agent`` (by keyword only) is an Agent, or None for the
    shared default one.

    ``update`` streams to the agent without waiting for it. An HMAC object
    is not safe for use by several threads at once; many HMAC objects on
    one Agent are.
    """

    def __init__(self, key, algorithm, backend=None, *, agent=None):
        name = _algorithm_name(algorithm)
        self._algorithm = algorithm
        self._name = name
        self._key = key
        self._agent = agent if agent is not None else default_agent()
        self._conn = None
        self._done = True
        self._key_version = None
        self._conn, self._context = self._agent._open(key, name)
        self._done = False

    @property
    def algorithm(self):
        """The algorithm object passed in."""
        return self._algorithm

    @property
    def key_version(self):
        """The version of the key that made the tag finalize returned, or
        that matched the tag verify accepted: the key's current version
        when the context was opened (kept through copy), or N for a key
        named "NAME@N". None before then, and from an agent too old to
        say."""
        return self._key_version

    def _live(self):
        if self._done:
            raise AlreadyFinalized("Context was already finalized.")
        if self._conn.broken is not None:
            self._done = True
            raise ContextLost("the connection to the agent was lost: %s" % self._conn.broken)

    def update(self, data):
        self._live()
        data = _bytes_like(data, "data")
        try:
            self._conn.update(self._context, data)
        except ConnectionLost as e:
            self._done = True
            raise ContextLost(str(e)) from None

    def copy(self):
        self._live()
        context = self._conn.next_context()
        self._roundtrip(_wire.COPY, struct.pack(">II", self._context, context), _wire.OK)
        c = HMAC.__new__(HMAC)
        c._algorithm, c._name, c._key, c._agent = self._algorithm, self._name, self._key, self._agent
        c._conn, c._context, c._done = self._conn, context, False
        c._key_version = None
        return c

    def finalize(self):
        self._live()
        self._done = True
        tag = self._roundtrip(_wire.FINALIZE, struct.pack(">I", self._context), _wire.TAG)
        return _check_tag(tag, self._name)

    def verify(self, signature):
        signature = _bytes_like(signature, "signature")
        self._live()
        self._done = True
        self._roundtrip(_wire.VERIFY, struct.pack(">I", self._context) + signature, _wire.OK)

    def _roundtrip(self, msg_type, payload, want):
        try:
            reply = self._conn.request(msg_type, payload)
        except ConnectionLost as e:
            self._done = True
            raise ContextLost(str(e)) from None
        payload, self._key_version = _expect_versioned(reply, want)
        return payload

    def __del__(self):
        # Free an abandoned context in the agent; best effort.
        try:
            if not self._done and self._conn is not None and self._conn.broken is None:
                self._done = True
                self._conn.send(_wire.frame(_wire.CLOSE, 0, struct.pack(">I", self._context)))
        except Exception:
            pass
