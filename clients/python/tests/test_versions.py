"""Key versions through the Python client and a real agent."""

import hashlib
import hmac as stdlib_hmac
import unittest

import hmac_agent
from hmac_agent import HMAC, Agent

from .agentproc import AgentProcess


def tag_of(secret, msg):
    return stdlib_hmac.new(secret, msg, hashlib.sha256).digest()


class VersionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc = AgentProcess()
        cls.proc.start()
        cls.agent = Agent(cls.proc.socket)

    @classmethod
    def tearDownClass(cls):
        cls.agent.close()
        cls.proc.cleanup()

    def test_rotate_verify_retire(self):
        a = self.agent
        a.import_key("pyrot", b"one")
        msg = b"payload"
        self.assertEqual(a.mac_versioned("pyrot", "sha256", msg), (tag_of(b"one", msg), 1))

        before = HMAC("pyrot", "sha256", agent=a)
        before.update(msg[:3])
        info = a.rotate_key("pyrot", b"two")
        self.assertEqual((info["version"], info["state"]), (2, "current"))
        copied = before.copy()
        before.update(msg[3:])
        copied.update(msg[3:])
        # A context keeps the version it was opened with, through copy.
        self.assertEqual(before.finalize(), tag_of(b"one", msg))
        self.assertEqual(before.key_version, 1)
        self.assertEqual(copied.finalize(), tag_of(b"one", msg))
        self.assertEqual(copied.key_version, 1)

        # The pyca surface is unchanged: mac and finalize return bytes.
        self.assertEqual(a.mac("pyrot", "sha256", msg), tag_of(b"two", msg))
        h = HMAC("pyrot", "sha256", agent=a)
        h.update(msg)
        self.assertEqual(h.finalize(), tag_of(b"two", msg))
        self.assertEqual(h.key_version, 2)

        # A plain name verifies every live version and says which.
        self.assertEqual(a.verify_mac("pyrot", "sha256", msg, tag_of(b"one", msg)), 1)
        self.assertEqual(a.verify_mac("pyrot", "sha256", msg, tag_of(b"two", msg)), 2)
        h = HMAC("pyrot", "sha256", agent=a)
        h.update(msg)
        h.verify(tag_of(b"one", msg))
        self.assertEqual(h.key_version, 1)

        # NAME@N is one version alone.
        self.assertEqual(a.mac_versioned("pyrot@1", "sha256", msg), (tag_of(b"one", msg), 1))
        with self.assertRaises(hmac_agent.InvalidSignature):
            a.verify_mac("pyrot@1", "sha256", msg, tag_of(b"two", msg))
        with self.assertRaises(hmac_agent.KeyNotFound):
            a.mac("pyrot@3", "sha256", msg)

        with self.assertRaisesRegex(hmac_agent.AgentError, "current version"):
            a.retire_version("pyrot", 2)
        a.retire_version("pyrot", 1)
        with self.assertRaises(hmac_agent.InvalidSignature):
            a.verify_mac("pyrot", "sha256", msg, tag_of(b"one", msg))
        a.retire_version("pyrot", 1, destroy=True)
        listed = [k for k in a.keys() if k["name"] == "pyrot"][0]
        self.assertEqual(listed["version"], 2)
        self.assertEqual([v["state"] for v in listed["versions"]], ["destroyed", "current"])
        a.rotate_key("pyrot", length=48)
        self.assertEqual(a.mac_versioned("pyrot", "sha256", msg)[1], 3)


if __name__ == "__main__":
    unittest.main()
