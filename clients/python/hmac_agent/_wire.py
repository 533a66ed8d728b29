"""The hmac-agent wire protocol (docs/protocol.md): frames and messages."""

import struct

# Protocol versions 1 and 2; version 2 adds key versions (TAG_VERSION,
# VERIFIED).
VERSION = 2
MIN_VERSION = 1
MAGIC = b"HMAC"

# Requests.
HELLO = 0x01
OPEN = 0x10
UPDATE = 0x11
COPY = 0x12
FINALIZE = 0x13
VERIFY = 0x14
CLOSE = 0x15
MAC = 0x20
VERIFY_MAC = 0x21
LIST_KEYS = 0x30
GENERATE_KEY = 0x31
IMPORT_KEY = 0x32
DELETE_KEY = 0x33
STATUS = 0x34
ROTATE_KEY = 0x36
RETIRE_VERSION = 0x37

# Replies.
OK = 0x80
HELLO_REPLY = 0x81
TAG = 0x82
DATA = 0x83
TAG_VERSION = 0x84
VERIFIED = 0x85
ERROR = 0x8F

# Algorithm codes (docs/protocol.md; checked against the agent's table by
# providers/algorithm_test.go).
ALGORITHMS = {
    "sha1": 1,
    "sha224": 2,
    "sha256": 3,
    "sha384": 4,
    "sha512": 5,
    "sha512_224": 6,
    "sha512_256": 7,
    "sha3_224": 8,
    "sha3_256": 9,
    "sha3_384": 10,
    "sha3_512": 11,
    "md5": 12,
    "blake2b": 13,
    "blake2s": 14,
    "sm3": 15,
}

DIGEST_SIZES = {
    "sha1": 20,
    "sha224": 28,
    "sha256": 32,
    "sha384": 48,
    "sha512": 64,
    "sha512_224": 28,
    "sha512_256": 32,
    "sha3_224": 28,
    "sha3_256": 32,
    "sha3_384": 48,
    "sha3_512": 64,
    "md5": 16,
    "blake2b": 64,
    "blake2s": 32,
    "sm3": 32,
}

# Error codes by the protocol's name (docs/protocol.md; checked against
# the agent's table by providers/errors_test.go).
ERROR_CODES = {
    "already_finalized": 1,
    "invalid_signature": 2,
    "unsupported_algorithm": 3,
    "key_not_found": 4,
    "permission_denied": 5,
    "key_exists": 6,
    "invalid_argument": 7,
    "not_supported": 8,
    "limit": 9,
    "unavailable": 10,
    "context_lost": 11,
    "unknown_context": 12,
    "bad_request": 13,
    "unknown_message": 14,
    "version": 15,
    "internal": 16,
    "shutting_down": 17,
    "closed": 18,
}

_HEADER = struct.Struct(">IBI")  # length, type, request ID


def frame(msg_type, request_id, payload=b""):
    """Return a whole frame: length, type, request ID, payload."""
    return _HEADER.pack(5 + len(payload), msg_type, request_id) + payload


def short(b):
    """A byte string prefixed by its one-byte length."""
    if len(b) > 255:
        raise ValueError("field longer than 255 bytes")
    return bytes((len(b),)) + b


def hello(request_id):
    return frame(HELLO, request_id, MAGIC + struct.pack(">HH", MIN_VERSION, VERSION))


def update_header(request_id, context, data_len):
    """The first 13 bytes of an UPDATE frame carrying data_len bytes."""
    return _HEADER.pack(9 + data_len, UPDATE, request_id) + struct.pack(">I", context)


def read_exact(sock, n):
    """Read exactly n bytes, or raise ConnectionError at end of stream."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the agent closed the connection")
        got += k
    return bytes(buf)


def read_frame(sock, max_frame):
    """Read one frame; return (type, request ID, payload)."""
    (length,) = struct.unpack(">I", read_exact(sock, 4))
    if length < 5 or length > max_frame:
        raise ConnectionError("bad frame length %d from the agent" % length)
    body = read_exact(sock, length)
    return body[0], struct.unpack(">I", body[1:5])[0], body[5:]
