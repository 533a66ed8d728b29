"""The connection to the agent."""

import itertools
import json
import os
import pwd
import socket
import stat
import struct
import threading

from . import _wire
from .errors import AgentError, AgentNotRunning, ConnectionLost, ContextLost, UntrustedAgent, from_code

SOCKET_ENV = "HMAC_AGENT_SOCK"
AGENT_UID_ENV = "HMAC_AGENT_UID"
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def default_socket_path():
    """$HMAC_AGENT_SOCK, else $XDG_RUNTIME_DIR/hmac-agent/agent.sock, else
    /tmp/hmac-agent-$UID/agent.sock: where the agent listens by default."""
    path = os.environ.get(SOCKET_ENV)
    if path:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "hmac-agent", "agent.sock")
    return "/tmp/hmac-agent-%d/agent.sock" % os.getuid()


def _parse_uid(value, where):
    """A uid given as a number or a user name."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("%s: %d is not a uid" % (where, value))
        return value
    value = str(value)
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError("%s: %r is neither a uid nor a known user name" % (where, value)) from None


def _trusted_uids(agent_uid):
    """Root, this process's uids, $HMAC_AGENT_UID and agent_uid: the users
    an agent may run as. A value naming no user raises ValueError rather
    than being ignored."""
    uids = {0, os.getuid(), os.geteuid()}
    env = os.environ.get(AGENT_UID_ENV)
    if env:
        uids.add(_parse_uid(env, "$" + AGENT_UID_ENV))
    if agent_uid is not None:
        uids.add(_parse_uid(agent_uid, "agent_uid"))
    return frozenset(uids)


def _check_agent(sock, path, trusted):
    """Refuse a listener whose uid (SO_PEERCRED) is not trusted, before
    anything is sent: a server another user planted at the path must not
    see a handshake, a key name, data or key bytes."""
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError as e:
        raise UntrustedAgent("cannot read the credentials of the agent at %s: %s" % (path, e)) from None
    if uid not in trusted:
        raise UntrustedAgent(
            "the server at %s runs as uid %d (pid %d), which is not root, this user (uid %d) or $%s: "
            "untrusted agent; nothing was sent to it" % (path, uid, pid, os.getuid(), AGENT_UID_ENV)
        )
    if uid == 0:
        _check_root_path(path, trusted)


_MAX_LINKS = 40  # as the kernel's own limit


def _check_root_path(path, trusted):
    """Vet the way to a socket root listens on. Root's credentials are
    those of every socket systemd makes, among them sockets it hands to
    services running as other users, who could link one where a client
    looks for the agent. So every directory and symbolic link on the way
    from / must be owned by root or a trusted uid, and no directory
    writable by others unless sticky. The socket's own owner is not
    judged: its listener was."""

    def refuse(what):
        return UntrustedAgent(
            "the agent at %s runs as root, but %s: anyone who could do that could have put another server there: "
            "untrusted agent; nothing was sent to it" % (path, what)
        )

    # Not os.path.abspath, which would drop "link/.." unresolved: the
    # kernel resolves link first, and so does the walk.
    full = path if path.startswith("/") else os.getcwd() + "/" + path
    pending = [n for n in full.split("/") if n not in ("", ".")]
    directory, links = "/", 0
    while True:
        try:
            st = os.lstat(directory)
        except OSError as e:
            raise refuse("%s cannot be checked (%s)" % (directory, e.strerror)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise refuse("%s on the way is not a directory" % directory)
        if st.st_uid not in trusted:
            raise refuse("the directory %s on the way is owned by uid %d" % (directory, st.st_uid))
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise refuse("the directory %s on the way (mode %04o) is writable by others than its owner"
                         % (directory, st.st_mode & 0o7777))
        if not pending:
            raise refuse("the path names a directory")
        name = pending.pop(0)
        if name == "..":
            directory = os.path.dirname(directory)
            continue
        p = os.path.join(directory, name)
        try:
            st = os.lstat(p)
        except OSError as e:
            raise refuse("%s cannot be checked (%s)" % (p, e.strerror)) from None
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in trusted:
                raise refuse("the symbolic link %s on the way is owned by uid %d" % (p, st.st_uid))
            links += 1
            if links > _MAX_LINKS:
                raise refuse("too many symbolic links on the way")
            target = os.readlink(p)
            if target.startswith("/"):
                directory = "/"
            pending = [n for n in target.split("/") if n not in ("", ".")] + pending
            continue
        if not pending:
            return  # the socket itself
        directory = p


class _Call:
    """A request waiting for its reply. event is set when the reply or an
    error arrives, and also to ask the caller to take over reading."""

    __slots__ = ("event", "type", "payload", "error")

    def __init__(self):
        self.event = threading.Event()
        self.type = None
        self.payload = None
        self.error = None


class _Connection:
    """One connection: writes under a lock; replies are read by a caller
    waiting for one, which hands the others' replies to them.

    There is no reader thread: a caller alone on the connection reads its
    own reply, which saves two thread switches per request (most of a
    one-shot's cost in CPython). Whoever holds _read_lock reads; when it
    has its reply it lets go and wakes another waiter to take over.
    """

    def __init__(self, path, timeout, trusted):
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            _check_agent(sock, path, trusted)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise AgentNotRunning("no hmac-agent listening at %s (agent not running): %s" % (path, e.strerror)) from None
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self.sock = sock
        self.max_frame = 4096
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._rbuf = bytearray()
        self._lock = threading.Lock()
        self._pending = {}
        self._ids = itertools.count(1)
        self._contexts = itertools.count(1)
        self.broken = None
        hello_id = self._next_id()
        call = self._register(hello_id)
        sock.settimeout(timeout)
        try:
            sock.sendall(_wire.hello(hello_id))
            msg_type, payload = self._wait(call)
        except ConnectionLost:
            if isinstance(self.broken, TimeoutError):
                raise ConnectionLost("no reply from the agent at %s within %s s" % (path, timeout)) from None
            raise
        finally:
            if self.broken is None:
                sock.settimeout(None)
        if msg_type == _wire.ERROR:
            self.close()
            raise _error(payload)
        if msg_type != _wire.HELLO_REPLY or len(payload) != 14:
            self.close()
            raise ConnectionLost("bad handshake reply from the agent at %s" % path)
        _version, self.max_frame, _contexts, _in_flight = struct.unpack(">HIII", payload)

    def _next_id(self):
        with self._lock:
            return next(self._ids) & 0xFFFFFFFF or next(self._ids)

    def next_context(self):
        with self._lock:
            return next(self._contexts) & 0xFFFFFFFF or next(self._contexts)

    def _register(self, request_id):
        call = _Call()
        with self._lock:
            if self.broken is not None:
                raise ConnectionLost("connection to the agent lost: %s" % self.broken)
            self._pending[request_id] = call
        return call

    def _read_until(self, call):
        """Read replies, handing each to its caller, until call has one."""
        try:
            while call.type is None and call.error is None:
                msg_type, request_id, payload = self._read_frame()
                with self._lock:
                    other = self._pending.pop(request_id, None)
                if other is None:
                    continue  # an error for an UPDATE or CLOSE
                other.type, other.payload = msg_type, payload
                if other is not call:
                    other.event.set()
        except Exception as e:  # the connection broke: fail every waiter
            self._fail(e)

    def _read_frame(self):
        """One frame from the socket, through a buffer: a reply usually
        takes one recv."""
        buf = self._rbuf
        while True:
            if len(buf) >= 4:
                (length,) = struct.unpack_from(">I", buf)
                if length < 5 or length > 1 << 24:
                    raise ConnectionError("bad frame length %d from the agent" % length)
                if len(buf) >= 4 + length:
                    body = bytes(buf[4 : 4 + length])
                    del buf[: 4 + length]
                    return body[0], struct.unpack_from(">I", body, 1)[0], body[5:]
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            buf += chunk

    def _fail(self, err):
        with self._lock:
            if self.broken is None:
                self.broken = err
            pending, self._pending = self._pending, {}
        for call in pending.values():
            call.error = err
            call.event.set()
        try:
            # shutdown, not just close: it wakes a caller blocked reading.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def _wait(self, call):
        while call.type is None and call.error is None:
            if self._read_lock.acquire(blocking=False):
                try:
                    self._read_until(call)
                finally:
                    self._read_lock.release()
                    self._hand_over()
            else:
                # Woken by the reply, or to take over reading. The flag is
                # cleared before the checks above run again, so neither
                # can be missed.
                call.event.wait()
                call.event.clear()
        if call.type is None:
            raise ConnectionLost("connection to the agent lost: %s" % call.error)
        return call.type, call.payload

    def _hand_over(self):
        """After reading: wake a caller still waiting, to read next."""
        with self._lock:
            waiting = next(iter(self._pending.values()), None)
        if waiting is not None:
            waiting.event.set()

    def send(self, data):
        with self._write_lock:
            try:
                self.sock.sendall(data)
            except OSError as e:
                self._fail(e)
                raise ConnectionLost("connection to the agent lost: %s" % e) from None

    def request(self, msg_type, payload):
        """Send a request and wait for its reply: (type, payload)."""
        request_id = self._next_id()
        call = self._register(request_id)
        self.send(_wire.frame(msg_type, request_id, payload))
        return self._wait(call)

    def update(self, context, data):
        """Stream data into a context without waiting: UPDATE has no reply."""
        chunk = self.max_frame - 9
        view = memoryview(data)
        first = True
        while first or len(view):
            first = False
            part = view[:chunk]
            view = view[chunk:]
            self.send(_wire.update_header(self._next_id(), context, len(part)) + bytes(part))

    def close(self):
        self._fail(ConnectionError("closed"))


def _error(payload):
    (code,) = struct.unpack(">H", payload[:2])
    return from_code(code, payload[2:].decode("utf-8", "replace"))


def _check_tag(tag, name):
    """The tag, if it is the full length of the named algorithm's: a
    shorter one, from a broken agent or device, is never a caller's tag."""
    size = _wire.DIGEST_SIZES[name]
    if len(tag) != size:
        raise AgentError("the agent sent a %d-byte tag for %s, whose tags are %d bytes" % (len(tag), name, size))
    return tag


def _expect(reply, want):
    return _expect_versioned(reply, want)[0]


def _expect_versioned(reply, want):
    """The reply's payload and the key version it names: TAG_VERSION
    answers for TAG, and VERIFIED for OK, from an agent of protocol
    version 2; an agent of version 1 names none (None)."""
    msg_type, payload = reply
    if msg_type == _wire.ERROR:
        raise _error(payload)
    if want == _wire.TAG and msg_type == _wire.TAG_VERSION and len(payload) >= 4:
        return payload[4:], struct.unpack(">I", payload[:4])[0]
    if want == _wire.OK and msg_type == _wire.VERIFIED and len(payload) == 4:
        return b"", struct.unpack(">I", payload)[0]
    if msg_type != want:
        raise ConnectionLost("the agent replied 0x%02x, expected 0x%02x" % (msg_type, want))
    return payload, None


class Agent:
    """A connection to hmac-agent, shared safely by any number of threads.

    It connects on first use to ``path``, or to $HMAC_AGENT_SOCK, else the
    agent's default path. If the agent restarts, the next call that starts
    afresh (a new HMAC, ``mac``, ``verify_mac``) connects again; contexts
    that lived on the old connection raise ContextLost.

    Before sending anything on each connection, it checks who listens
    (SO_PEERCRED): the agent must run as root (which includes systemd's
    socket activation), as this process's user, as the uid or user name in
    $HMAC_AGENT_UID, or as ``agent_uid`` (a uid or user name); anything else
    raises UntrustedAgent. A root listener is trusted only through a path
    whose directories and links root or those uids own, none writable by
    others unless sticky: root is also the uid of sockets systemd hands to
    services of other users. A value that names no user raises ValueError.

    Use it as a context manager to close it, or leave it open for the life
    of the process.
    """

    def __init__(self, path=None, timeout=10.0, agent_uid=None):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._trusted = _trusted_uids(agent_uid)
        self._lock = threading.Lock()
        self._conn = None
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the connection; the agent frees its contexts."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self):
        with self._lock:
            if self._closed:
                raise ConnectionLost("the Agent was closed")
            if self._conn is None or self._conn.broken is not None:
                self._conn = _Connection(self.path, self.timeout, self._trusted)
            return self._conn

    def _request(self, msg_type, payload):
        """A request that starts afresh: retried once on a new connection
        if the old one turns out to be dead when sending, since then the
        agent never saw it."""
        conn = self._connection()
        try:
            return conn.request(msg_type, payload)
        except ConnectionLost:
            if conn.broken is None:
                raise
            return self._connection().request(msg_type, payload)

    def mac(self, key, algorithm, data):
        """The tag of data under the named key, in one round trip. The
        key's current version makes it; "NAME@N" names version N."""
        return self.mac_versioned(key, algorithm, data)[0]

    def mac_versioned(self, key, algorithm, data):
        """mac, returning (tag, version): the key version that made the
        tag, or None from an agent too old to say."""
        from ._hmac import _algorithm_name, _bytes_like

        name = _algorithm_name(algorithm)
        data = _bytes_like(data, "data")
        if len(data) > 60000:
            h = self.new(key, algorithm)
            h.update(data)
            tag = h.finalize()
            return tag, h.key_version
        payload = bytes((_wire.ALGORITHMS[name],)) + _wire.short(_key_name(key)) + data
        tag, version = _expect_versioned(self._request(_wire.MAC, payload), _wire.TAG)
        return _check_tag(tag, name), version

    def verify_mac(self, key, algorithm, data, signature):
        """Check signature over data in the agent, in constant time; raise
        InvalidSignature if it does not match. A plain name accepts a tag
        of any live version of the key, "NAME@N" only version N's. Returns
        the version whose tag matched (None from an agent too old to say)."""
        from ._hmac import _algorithm_name, _bytes_like
        from .errors import InvalidSignature

        name = _algorithm_name(algorithm)
        data = _bytes_like(data, "data")
        signature = _bytes_like(signature, "signature")
        if len(signature) > 255:
            raise InvalidSignature("Signature did not match digest.")
        if len(data) > 60000:
            h = self.new(key, algorithm)
            h.update(data)
            h.verify(signature)
            return h.key_version
        payload = bytes((_wire.ALGORITHMS[name],)) + _wire.short(_key_name(key)) + _wire.short(signature) + data
        return _expect_versioned(self._request(_wire.VERIFY_MAC, payload), _wire.OK)[1]

    def new(self, key, algorithm):
        """An HMAC context on the named key (as ``HMAC(key, algorithm, agent=self)``)."""
        from ._hmac import HMAC

        return HMAC(key, algorithm, agent=self)

    def import_key(self, name, secret, provider=""):
        """Store secret as a new key (the agent's owner and root only)."""
        from ._hmac import _bytes_like

        payload = _wire.short(provider.encode()) + _wire.short(_key_name(name)) + _bytes_like(secret, "secret")
        return json.loads(_expect(self._request(_wire.IMPORT_KEY, payload), _wire.DATA))

    def rotate_key(self, name, secret=None, length=0, provider=""):
        """Add a version to a key and make it current: generated in its
        provider (length bytes, 0 for its default) when secret is None,
        else imported from secret. Returns the new version as a dict
        (the agent's owner and root only)."""
        from ._hmac import _bytes_like

        flags, data = 0, b""
        if secret is not None:
            flags, data = 1, _bytes_like(secret, "secret")
        payload = (_wire.short(provider.encode()) + _wire.short(_key_name(name))
                   + struct.pack(">IB", length, flags) + data)
        return json.loads(_expect(self._request(_wire.ROTATE_KEY, payload), _wire.DATA))

    def retire_version(self, name, version, destroy=False, provider=""):
        """Stop a version of a key verifying; with destroy, delete it."""
        payload = (_wire.short(provider.encode()) + _wire.short(_key_name(name))
                   + struct.pack(">IB", version, 1 if destroy else 0))
        _expect(self._request(_wire.RETIRE_VERSION, payload), _wire.OK)

    def keys(self):
        """The keys the caller may use: a list of dicts, never key bytes."""
        return json.loads(_expect(self._request(_wire.LIST_KEYS, b""), _wire.DATA))

    def status(self):
        """The agent's status as a dict."""
        return json.loads(_expect(self._request(_wire.STATUS, b""), _wire.DATA))

    # Used by HMAC.
    def _open(self, key, name):
        """Open a context; return (connection, context ID)."""
        payload_tail = bytes((_wire.ALGORITHMS[name],)) + _wire.short(_key_name(key))
        for attempt in (0, 1):
            conn = self._connection()
            context = conn.next_context()
            try:
                reply = conn.request(_wire.OPEN, struct.pack(">I", context) + payload_tail)
            except ConnectionLost:
                if attempt or conn.broken is None:
                    raise
                continue
            _expect(reply, _wire.OK)
            return conn, context
        raise ContextLost("could not open a context")  # pragma: no cover


def _key_name(key):
    if isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError("key must be the name of a key held by the agent (str), not key bytes")
    if not isinstance(key, str):
        raise TypeError("key must be a str, the name of a key held by the agent")
    b = key.encode("utf-8")
    if len(b) > 255:
        from .errors import KeyNotFound

        raise KeyNotFound("key %r not found" % key, _wire.ERROR_CODES["key_not_found"])
    return b


_default = None
_default_lock = threading.Lock()


def default_agent():
    """The process-wide Agent that HMAC uses when given none."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Agent()
        return _default
