import binascii
import hashlib
import hmac as stdlib_hmac
import inspect
import json
import os
import random
import threading
import unittest

import hmac_agent
from hmac_agent import HMAC, Agent

from .agentproc import REPO, AgentProcess, vectors_dir

try:
    import cryptography.exceptions
    from cryptography.hazmat.backends import default_backend
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as pyca_hmac
except ImportError:  # the fallback classes are tested then
    cryptography = None
    hashes = None

AGENT = None
PROC = None
_keys = {}
_keys_lock = threading.Lock()

STDLIB = {
    "sha1": hashlib.sha1,
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "sha512_224": lambda *a: hashlib.new("sha512_224", *a),
    "sha512_256": lambda *a: hashlib.new("sha512_256", *a),
    "sha3_224": hashlib.sha3_224,
    "sha3_256": hashlib.sha3_256,
    "sha3_384": hashlib.sha3_384,
    "sha3_512": hashlib.sha3_512,
    "md5": hashlib.md5,
    "blake2b": hashlib.blake2b,  # digest_size 64 by default
    "blake2s": hashlib.blake2s,  # digest_size 32 by default
}
# hashlib has SM3 only where its OpenSSL does.
if "sm3" in hashlib.algorithms_available:
    STDLIB["sm3"] = lambda *a: hashlib.new("sm3", *a)

BLOCK_SIZES = {"sha384": 128, "sha512": 128, "sha512_224": 128, "sha512_256": 128, "blake2b": 128,
               "sha3_224": 144, "sha3_256": 136, "sha3_384": 104, "sha3_512": 72}


def setUpModule():
    global AGENT, PROC
    PROC = AgentProcess()
    PROC.start()
    AGENT = Agent(PROC.socket)


def tearDownModule():
    AGENT.close()
    PROC.cleanup()


def key(secret):
    """The name of a key holding secret, imported once."""
    name = "py-" + hashlib.sha256(secret).hexdigest()[:16]
    with _keys_lock:
        if name not in _keys:
            AGENT.import_key(name, secret)
            _keys[name] = secret
    return name


def reference(alg, secret, msg):
    return stdlib_hmac.new(secret, msg, STDLIB[alg]).digest()


class PycaBehaviour(unittest.TestCase):
    def setUp(self):
        self.secret = b"pyca-behaviour-key"
        self.name = key(self.secret)

    def test_finalize_then_everything_is_already_finalized(self):
        h = HMAC(self.name, "sha256", agent=AGENT)
        h.update(b"abc")
        self.assertEqual(h.finalize(), reference("sha256", self.secret, b"abc"))
        for call in (lambda: h.update(b"x"), h.copy, h.finalize, lambda: h.verify(b"x" * 32)):
            with self.assertRaises(hmac_agent.AlreadyFinalized):
                call()

    def test_failed_verify_finalizes(self):
        h = HMAC(self.name, "sha256", agent=AGENT)
        with self.assertRaises(hmac_agent.InvalidSignature):
            h.verify(b"\0" * 32)
        with self.assertRaises(hmac_agent.AlreadyFinalized):
            h.update(b"x")

    def test_wrong_length_is_invalid_signature(self):
        tag = reference("sha256", self.secret, b"m")
        for sig in (b"", tag[:-1], tag + b"\0", tag[:16]):
            h = HMAC(self.name, "sha256", agent=AGENT)
            h.update(b"m")
            with self.assertRaises(hmac_agent.InvalidSignature):
                h.verify(sig)
            with self.assertRaises(hmac_agent.InvalidSignature):
                AGENT.verify_mac(self.name, "sha256", b"m", sig)

    def test_empty_key_and_message(self):
        name = key(b"")
        for alg in STDLIB:
            self.assertEqual(HMAC(name, alg, agent=AGENT).finalize(), reference(alg, b"", b""), alg)

    def test_random_lengths_against_hashlib(self):
        # Key lengths around the digest and block sizes, messages of
        # random length in random pieces, copies: against hashlib's
        # HMAC, which shares no code with the agent.
        rng = random.Random(11)
        count = 0
        for alg in STDLIB:
            size, block = hmac_agent._wire.DIGEST_SIZES[alg], BLOCK_SIZES.get(alg, 64)
            for key_len in sorted({0, 1, size - 1, size, size + 1, block - 1, block, block + 1, 2 * block + 1}):
                secret = rng.randbytes(key_len)
                name = key(secret)
                msg = rng.randbytes(rng.randrange(0, 3 * block + 1))
                h = HMAC(name, alg, agent=AGENT)
                pos = 0
                copies = []
                while pos < len(msg):
                    n = rng.randrange(0, len(msg) - pos + 1)
                    h.update(msg[pos : pos + n])
                    pos += n
                    if rng.random() < 0.3:
                        copies.append((h.copy(), pos))
                self.assertEqual(h.finalize(), reference(alg, secret, msg), "%s key %d" % (alg, key_len))
                self.assertEqual(AGENT.mac(name, alg, msg), reference(alg, secret, msg))
                for c, at in copies:
                    c.update(b"copy")
                    c.verify(reference(alg, secret, msg[:at] + b"copy"))
                count += 1
        self.assertGreater(count, 0)

    def test_bytes_like_accepted(self):
        want = reference("sha256", self.secret, b"abcdef")
        h = HMAC(self.name, "sha256", agent=AGENT)
        h.update(b"ab")
        h.update(bytearray(b"cd"))
        h.update(memoryview(b"xxefxx")[2:4])
        h.verify(memoryview(want))
        self.assertEqual(AGENT.mac(self.name, "sha256", bytearray(b"abcdef")), want)

    def test_type_errors(self):
        h = HMAC(self.name, "sha256", agent=AGENT)
        with self.assertRaises(TypeError):
            h.update("text")
        with self.assertRaises(TypeError):
            h.verify("text")
        with self.assertRaises(TypeError):
            HMAC(b"key bytes, not a name", "sha256", agent=AGENT)
        with self.assertRaises(TypeError):
            HMAC(self.name, object(), agent=AGENT)
        if hashes is not None:
            with self.assertRaises(TypeError):
                HMAC(self.name, hashes.SHA256, agent=AGENT)  # the class, not an instance
        h.finalize()

    def test_unsupported_algorithms(self):
        for alg in ("shake128", "blake2b512", "blake2s128", "whirlpool", "sha256 "):
            with self.assertRaises(hmac_agent.UnsupportedAlgorithm):
                HMAC(self.name, alg, agent=AGENT)
        if hashes is not None:

            class BLAKE2b32(hashes.HashAlgorithm):
                # A BLAKE2b of a size pyca refuses; the agent computes
                # only BLAKE2b-512, whose tags would never match.
                name = "blake2b"
                digest_size = 32
                block_size = 128

            for alg in (hashes.SHAKE128(16), hashes.SHAKE256(32), BLAKE2b32()):
                with self.assertRaises(hmac_agent.UnsupportedAlgorithm):
                    HMAC(self.name, alg, agent=AGENT)
                with self.assertRaises(hmac_agent.UnsupportedAlgorithm):
                    AGENT.mac(self.name, alg, b"x")

    def test_new_algorithms_by_name_and_object(self):
        objects = {}
        if hashes is not None:
            objects = {"md5": hashes.MD5(), "blake2b": hashes.BLAKE2b(64), "blake2s": hashes.BLAKE2s(32),
                       "sm3": hashes.SM3()}
        for alg in ("md5", "blake2b", "blake2s", "sm3"):
            by_name = HMAC(self.name, alg, agent=AGENT)
            by_name.update(b"abc")
            tag = by_name.finalize()
            self.assertEqual(len(tag), hmac_agent._wire.DIGEST_SIZES[alg])
            if alg in STDLIB:
                self.assertEqual(tag, reference(alg, self.secret, b"abc"), alg)
            if alg in objects:
                self.assertEqual(AGENT.mac(self.name, objects[alg], b"abc"), tag, alg)
                AGENT.verify_mac(self.name, objects[alg], b"abc", tag)

    def test_backend_is_accepted_and_ignored(self):
        # pyca's HMAC(key, algorithm, backend): old code passes a backend
        # positionally, newer code passes None or nothing.
        want = reference("sha256", self.secret, b"abc")
        backends = [None, object(), "anything"]
        if cryptography is not None:
            backends.append(default_backend())
        for backend in backends:
            h = HMAC(self.name, "sha256", backend, agent=AGENT)
            h.update(b"abc")
            self.assertEqual(h.finalize(), want)
            h = HMAC(key=self.name, algorithm="sha256", backend=backend, agent=AGENT)
            h.update(data=b"abc")
            h.verify(signature=want)
        # The agent is given by keyword only, so it can never be taken
        # for a backend.
        with self.assertRaises(TypeError):
            HMAC(self.name, "sha256", None, AGENT)

    @unittest.skipIf(cryptography is None, "cryptography is not installed")
    def test_old_pyca_call_with_default_backend(self):
        # The call of the issue, unchanged but for the key name, on the
        # shared default agent.
        old = os.environ.get("HMAC_AGENT_SOCK")
        os.environ["HMAC_AGENT_SOCK"] = PROC.socket
        try:
            h = hmac_agent.HMAC(self.name, hashes.SHA256(), default_backend())
            h.update(b"body")
            h.verify(reference("sha256", self.secret, b"body"))
        finally:
            if old is None:
                del os.environ["HMAC_AGENT_SOCK"]
            else:
                os.environ["HMAC_AGENT_SOCK"] = old

    @unittest.skipIf(cryptography is None, "cryptography is not installed")
    def test_signatures_match_pyca(self):
        def params(f):
            return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()
                    if not p.name.startswith("_") and p.name != "self"]

        ours = params(HMAC)
        theirs = [p for p in params(pyca_hmac.HMAC) if p[0] != "ctx"]  # ctx: private, in pyca < 39
        self.assertEqual(ours[: len(theirs)], theirs)
        for p in ours[len(theirs):]:
            self.assertEqual(p[1], inspect.Parameter.KEYWORD_ONLY, p)
        for method in ("update", "copy", "verify", "finalize"):
            self.assertEqual(params(getattr(HMAC, method)), params(getattr(pyca_hmac.HMAC, method)), method)
        self.assertIsInstance(HMAC.algorithm, property)

    def test_algorithm_is_the_object_passed(self):
        alg = hashes.SHA384() if hashes is not None else "sha384"
        h = HMAC(self.name, alg, agent=AGENT)
        self.assertIs(h.algorithm, alg)
        h.finalize()

    def test_missing_key(self):
        with self.assertRaises(hmac_agent.KeyNotFound) as cm:
            HMAC("no-such-key", "sha256", agent=AGENT)
        self.assertIn("no-such-key", str(cm.exception))

    def test_copy_is_independent(self):
        h = HMAC(self.name, "sha512", agent=AGENT)
        h.update(b"abc")
        c = h.copy()
        h.update(b"def")
        c.update(b"xyz")
        self.assertEqual(h.finalize(), reference("sha512", self.secret, b"abcdef"))
        self.assertEqual(c.finalize(), reference("sha512", self.secret, b"abcxyz"))

    def test_long_streams(self):
        msg = os.urandom(3 << 20)  # several frames
        h = HMAC(self.name, "sha256", agent=AGENT)
        h.update(msg)
        self.assertEqual(h.finalize(), reference("sha256", self.secret, msg))
        self.assertEqual(AGENT.mac(self.name, "sha256", msg), reference("sha256", self.secret, msg))

    @unittest.skipIf(cryptography is None, "cryptography is not installed")
    def test_exceptions_are_cryptographys_own(self):
        self.assertIs(hmac_agent.InvalidSignature, cryptography.exceptions.InvalidSignature)
        self.assertIs(hmac_agent.AlreadyFinalized, cryptography.exceptions.AlreadyFinalized)
        self.assertIs(hmac_agent.UnsupportedAlgorithm, cryptography.exceptions.UnsupportedAlgorithm)
        h = HMAC(self.name, hashes.SHA256(), agent=AGENT)
        try:
            h.verify(b"\0" * 32)
        except cryptography.exceptions.InvalidSignature:
            pass
        else:
            self.fail("no InvalidSignature")

    def test_unavailable_is_an_agent_error(self):
        from hmac_agent.errors import from_code

        e = from_code(10, 'provider "tpm" did not answer within 5s')
        self.assertIsInstance(e, hmac_agent.Unavailable)
        self.assertIsInstance(e, hmac_agent.AgentError)
        self.assertEqual(e.code, 10)
        self.assertIn('"tpm"', str(e))

    @unittest.skipIf(cryptography is not None, "cryptography is installed")
    def test_fallback_exceptions(self):
        self.assertEqual(hmac_agent.InvalidSignature.__module__, "hmac_agent.errors")


class Vectors(unittest.TestCase):
    def test_wycheproof(self):
        d = os.path.join(vectors_dir(), "wycheproof")
        count = 0
        for alg in list(hmac_agent._wire.ALGORITHMS):
            path = os.path.join(d, "hmac_%s_test.json" % alg)
            if alg in ("md5", "blake2b", "blake2s"):  # Wycheproof has none
                self.assertFalse(os.path.exists(path))
                continue
            with open(path) as f:
                data = json.load(f)
            for group in data["testGroups"]:
                for t in group["tests"]:
                    secret, msg, tag = (binascii.unhexlify(t[k]) for k in ("key", "msg", "tag"))
                    name = key(secret)
                    full = AGENT.mac(name, alg, msg)
                    valid = t["result"] == "valid"
                    self.assertEqual(full[: len(tag)] == tag, valid, "%s tcId %d" % (alg, t["tcId"]))
                    if len(tag) == len(full):
                        h = HMAC(name, alg, agent=AGENT)
                        h.update(msg)
                        if valid:
                            h.verify(tag)
                            AGENT.verify_mac(name, alg, msg, tag)
                        else:
                            with self.assertRaises(hmac_agent.InvalidSignature):
                                h.verify(tag)
                            with self.assertRaises(hmac_agent.InvalidSignature):
                                AGENT.verify_mac(name, alg, msg, tag)
                    count += 1
        self.assertEqual(count, 2080)  # 1906 for SHA-1, SHA-2 and SHA-3, 174 for SM3

    def test_rfc(self):
        d = os.path.join(vectors_dir(), "rfc")
        # The shared vectors lack RFC 2202's MD5 cases; the repository
        # keeps them beside the Go loader.
        md5 = os.path.join(REPO, "internal", "testvectors", "testdata", "rfc-2202-md5.txt")
        count = 0
        for fname, alg in ((md5, "md5"), ("rfc-2202-sha1.txt", "sha1"), ("rfc-4231-sha224.txt", "sha224"),
                           ("rfc-4231-sha256.txt", "sha256"), ("rfc-4231-sha384.txt", "sha384"),
                           ("rfc-4231-sha512.txt", "sha512")):
            case = {}
            with open(os.path.join(d, fname)) as f:
                for line in f:
                    line = line.strip()
                    if not line or line[0] in "#[":
                        continue
                    field, _, value = line.partition(" = ")
                    case[field] = value
                    if field == "MD":
                        msg = binascii.unhexlify(case["Msg"])[: int(case["Len"]) // 8]
                        h = HMAC(key(binascii.unhexlify(case["Key"])), alg, agent=AGENT)
                        h.update(msg)
                        self.assertEqual(h.finalize(), binascii.unhexlify(value), fname)
                        count += 1
        self.assertEqual(count, 38)


@unittest.skipIf(cryptography is None, "cryptography is not installed")
class ParityWithCryptography(unittest.TestCase):
    ALGS = {
        "sha1": lambda: hashes.SHA1(), "sha224": lambda: hashes.SHA224(), "sha256": lambda: hashes.SHA256(),
        "sha384": lambda: hashes.SHA384(), "sha512": lambda: hashes.SHA512(),
        "sha512_224": lambda: hashes.SHA512_224(), "sha512_256": lambda: hashes.SHA512_256(),
        "sha3_224": lambda: hashes.SHA3_224(), "sha3_256": lambda: hashes.SHA3_256(),
        "sha3_384": lambda: hashes.SHA3_384(), "sha3_512": lambda: hashes.SHA3_512(),
        "md5": lambda: hashes.MD5(), "blake2b": lambda: hashes.BLAKE2b(64), "blake2s": lambda: hashes.BLAKE2s(32),
        "sm3": lambda: hashes.SM3(),
    }

    def test_every_algorithm_has_a_pyca_hash(self):
        self.assertEqual(sorted(self.ALGS), sorted(hmac_agent._wire.ALGORITHMS))

    def test_random_splits_and_copies(self):
        rng = random.Random(7)
        for alg, make in self.ALGS.items():
            try:
                pyca_hmac.HMAC(b"k", make())
            except cryptography.exceptions.UnsupportedAlgorithm:
                # The agent's SM3 is still checked against Wycheproof's
                # vectors above and, where hashlib has SM3, against it.
                self.assertEqual(alg, "sm3", "cryptography lacks %s" % alg)
                print("\nskipping %s parity: this cryptography's OpenSSL lacks it" % alg)
                continue
            for _ in range(6):
                secret = rng.randbytes(rng.randrange(0, 200))
                name = key(secret)
                ours, theirs = HMAC(name, make(), agent=AGENT), pyca_hmac.HMAC(secret, make())
                branches = []
                for _ in range(rng.randrange(1, 8)):
                    part = rng.randbytes(rng.randrange(0, 3000))
                    ours.update(part)
                    theirs.update(part)
                    if rng.random() < 0.4:
                        branches.append((ours.copy(), theirs.copy()))
                self.assertEqual(ours.finalize(), theirs.finalize(), alg)
                for o, t in branches:
                    o.update(b"tail")
                    t.update(b"tail")
                    tag = t.finalize()
                    o.verify(tag)


class Threads(unittest.TestCase):
    def test_eight_threads_share_one_agent(self):
        secret = b"threads"
        name = key(secret)
        errors = []

        def work(n):
            try:
                for i in range(200):
                    msg = b"thread %d message %d" % (n, i)
                    want = reference("sha256", secret, msg)
                    if i % 2:
                        self.assertEqual(AGENT.mac(name, "sha256", msg), want)
                    else:
                        h = HMAC(name, "sha256", agent=AGENT)
                        for b in range(0, len(msg), 3):
                            h.update(msg[b : b + 3])
                        h.verify(want)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_close_wakes_a_caller_reading(self):
        # A caller waiting for its reply reads the socket itself; closing
        # the Agent from another thread must wake it with ConnectionLost.
        agent = Agent(PROC.socket)
        agent.keys()
        conn = agent._connection()
        call = conn._register(0xFFFFFFF0)  # a request the agent never saw
        errors = []

        def wait():
            try:
                conn._wait(call)
            except hmac_agent.ConnectionLost as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        t.join(0.2)
        self.assertTrue(t.is_alive(), "the waiter returned without a reply")
        agent.close()
        t.join(5)
        self.assertFalse(t.is_alive(), "close left the reading caller blocked")
        self.assertEqual(len(errors), 1)


class Connection(unittest.TestCase):
    def test_agent_not_running(self):
        path = os.path.join(PROC.dir, "nobody-here.sock")
        with self.assertRaises(hmac_agent.AgentNotRunning) as cm:
            Agent(path).mac("k", "sha256", b"")
        self.assertIn(path, str(cm.exception))

    def test_environment_variable_and_default_agent(self):
        old = os.environ.get("HMAC_AGENT_SOCK")
        os.environ["HMAC_AGENT_SOCK"] = PROC.socket
        try:
            self.assertEqual(hmac_agent.default_socket_path(), PROC.socket)
            h = HMAC(key(b"env"), "sha256")  # the shared default agent
            self.assertEqual(h.finalize(), reference("sha256", b"env", b""))
        finally:
            if old is None:
                del os.environ["HMAC_AGENT_SOCK"]
            else:
                os.environ["HMAC_AGENT_SOCK"] = old

    def test_context_manager(self):
        with Agent(PROC.socket) as a:
            self.assertEqual(a.mac(key(b"cm"), "sha1", b"x"), reference("sha1", b"cm", b"x"))
        with self.assertRaises(hmac_agent.ConnectionLost):
            a.mac(key(b"cm"), "sha1", b"x")

    def test_reconnects_after_restart(self):
        a = Agent(PROC.socket)
        name = key(b"restart")
        h = HMAC(name, "sha256", agent=a)
        h.update(b"before")
        PROC.stop()
        PROC.start()
        with self.assertRaises(hmac_agent.ContextLost):
            h.update(b"after")
            h.finalize()
        self.assertEqual(a.mac(name, "sha256", b"after"), reference("sha256", b"restart", b"after"))
        a.close()
        # The shared test agent reconnects too.
        self.assertEqual(AGENT.mac(name, "sha256", b"x"), reference("sha256", b"restart", b"x"))


class ShortTagFromAgent(unittest.TestCase):
    """A tag that is not the algorithm's full length, from a broken agent
    or device, is an error, never handed to the caller as a tag."""

    def test_short_tag_is_an_error(self):
        import socket
        import struct
        import tempfile

        d = tempfile.mkdtemp()
        path = os.path.join(d, "agent.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)

        def serve():
            conn, _ = server.accept()
            with conn:
                buf = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                        n = struct.unpack(">I", buf[:4])[0]
                        msg_type, request_id = buf[4], struct.unpack(">I", buf[5:9])[0]
                        buf = buf[4 + n :]
                        if msg_type == 0x01:  # HELLO
                            out = 0x81, struct.pack(">HIII", 1, 1 << 20, 64, 64)
                        elif msg_type == 0x10:  # OPEN
                            out = 0x80, b""
                        elif msg_type in (0x20, 0x13):  # MAC, FINALIZE
                            out = 0x82, b"\x00"
                        else:
                            continue
                        conn.sendall(struct.pack(">IBI", 5 + len(out[1]), out[0], request_id) + out[1])

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        agent = Agent(path)
        try:
            with self.assertRaises(hmac_agent.AgentError):
                agent.mac("k", "sha256", b"x")
            h = HMAC("k", "sha256", agent=agent)
            h.update(b"x")
            with self.assertRaises(hmac_agent.AgentError):
                h.finalize()
        finally:
            agent.close()
            server.close()
            os.unlink(path)
            os.rmdir(d)


if __name__ == "__main__":
    unittest.main()
