"""The client authenticates the agent: a server planted at the socket path
by another user is refused before anything is sent to it. These tests run
processes as other users, so they need root; with CI set they fail
without it rather than skip."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

import hmac_agent
from hmac_agent import Agent, UntrustedAgent

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(HERE), "hmac_agent")
OTHER_UID = 1005
NOBODY = pwd.getpwnam("nobody").pw_uid
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def setUpModule():
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise AssertionError("CI is set but the tests do not run as root; the untrusted-agent tests need root")
        raise unittest.SkipTest("needs root to run a server as another user")


class Forger:
    """The forging agent (forger.py), run as uid."""

    def __init__(self, workdir, path, uid):
        self.proc = subprocess.Popen(
            [PYTHON, "-S", os.path.join(workdir, "forger.py"), path],
            user=uid, group=uid, extra_groups=[], stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline().strip()
        if line != "listening":
            self.proc.kill()
            raise RuntimeError("the forger did not start: %r" % line)
        self.lines = []

    def stop(self):
        """Stop it; return (connections accepted, bytes received)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines += out.split()
        accepted = out.count("accepted")
        received = sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("received "))
        return accepted, received


def verify_forged(path, **kw):
    """verify_mac of an all-zero tag, which only a forger accepts."""
    with Agent(path, **kw) as agent:
        agent.verify_mac("webhook", "sha256", b"body", bytes(32))


class UntrustedAgentTest(unittest.TestCase):
    def setUp(self):
        self.env = dict(os.environ)
        os.environ.pop("HMAC_AGENT_UID", None)
        self.dir = tempfile.mkdtemp(prefix="hmac-agent-py-trust-")
        os.chmod(self.dir, 0o711)
        shutil.copy(os.path.join(HERE, "forger.py"), self.dir)
        os.chmod(os.path.join(self.dir, "forger.py"), 0o644)
        self.forgers = []

    def tearDown(self):
        for f in self.forgers:
            f.stop()
        os.environ.clear()
        os.environ.update(self.env)
        shutil.rmtree(self.dir, ignore_errors=True)

    def forger(self, uid):
        d = os.path.join(self.dir, "run-%d" % uid)
        os.mkdir(d, 0o755)
        os.chown(d, uid, uid)
        path = os.path.join(d, "agent.sock")
        f = Forger(self.dir, path, uid)
        self.forgers.append(f)
        return f, path

    def test_refused_and_sent_nothing(self):
        f, path = self.forger(OTHER_UID)
        agent = Agent(path)
        self.addCleanup(agent.close)
        with self.assertRaises(UntrustedAgent) as cm:
            agent.verify_mac("webhook", "sha256", b"body", bytes(32))
        self.assertIn(path, str(cm.exception))
        self.assertIn("uid %d" % OTHER_UID, str(cm.exception))
        with self.assertRaises(UntrustedAgent):
            agent.import_key("stolen", b"the-secret-key-bytes")
        with self.assertRaises(UntrustedAgent):
            hmac_agent.HMAC("webhook", "sha256", agent=agent).update(b"x")
        self.assertTrue(issubclass(UntrustedAgent, hmac_agent.AgentError))
        self.forgers.remove(f)
        accepted, received = f.stop()
        self.assertGreaterEqual(accepted, 2)
        self.assertEqual(received, 0, "the forger received bytes")

    def test_named_agent_user_is_believed(self):
        # The forger is convincing: a client told to trust its user
        # accepts its forged tag. Only the check keeps it out.
        f, path = self.forger(OTHER_UID)
        os.environ["HMAC_AGENT_UID"] = str(OTHER_UID)
        verify_forged(path)
        del os.environ["HMAC_AGENT_UID"]
        verify_forged(path, agent_uid=OTHER_UID)
        with Agent(path, agent_uid=OTHER_UID) as agent:
            self.assertEqual(agent.import_key("k", b"secret")["name"], "forged")

        _, nobody_path = self.forger(NOBODY)
        os.environ["HMAC_AGENT_UID"] = "nobody"
        verify_forged(nobody_path)
        del os.environ["HMAC_AGENT_UID"]
        verify_forged(nobody_path, agent_uid="nobody")
        with self.assertRaises(UntrustedAgent):
            verify_forged(nobody_path)

        os.environ["HMAC_AGENT_UID"] = "no-such-user-here"
        with self.assertRaises(ValueError):
            Agent(path)

    def test_own_user_is_believed(self):
        _, path = self.forger(OTHER_UID)
        shutil.copytree(PACKAGE, os.path.join(self.dir, "pkg", "hmac_agent"))
        subprocess.run(["chmod", "-R", "a+rX", os.path.join(self.dir, "pkg")], check=True)
        script = "import hmac_agent; hmac_agent.Agent(%r).verify_mac('webhook', 'sha256', b'body', bytes(32)); print('ok')" % path
        env = dict(os.environ, PYTHONPATH=os.path.join(self.dir, "pkg"), PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run([PYTHON, "-S", "-c", script], user=OTHER_UID, group=OTHER_UID, extra_groups=[],
                             env=env, capture_output=True, text=True, cwd=self.dir)
        self.assertEqual(out.stdout.strip(), "ok", out.stderr)

    def test_root_socket_behind_another_users_link(self):
        # Root's credentials are those of every socket systemd makes,
        # among them sockets of services that run as other users. Uid
        # OTHER_UID links such a socket (here a forger's, run as root)
        # where the client looks for the agent, in a directory of its own,
        # as /tmp/hmac-agent-$UID would be: refused, though the listener
        # is root's, and sent nothing.
        service = os.path.join(self.dir, "service")
        os.mkdir(service, 0o755)
        f = Forger(self.dir, os.path.join(service, "agent.sock"), 0)
        self.forgers.append(f)
        squat = os.path.join(self.dir, "hmac-agent-squat")
        os.mkdir(squat, 0o755)
        link = os.path.join(squat, "agent.sock")
        os.symlink(os.path.join(service, "agent.sock"), link)
        os.lchown(squat, OTHER_UID, OTHER_UID)
        os.lchown(link, OTHER_UID, OTHER_UID)
        with self.assertRaises(UntrustedAgent) as cm:
            verify_forged(link)
        self.assertIn(squat, str(cm.exception))
        self.forgers.remove(f)
        _, received = f.stop()
        self.assertEqual(received, 0, "the forger received bytes")
        # Reached by its own path, in directories root owns, it is believed.
        f = Forger(self.dir, os.path.join(service, "agent.sock"), 0)
        self.forgers.append(f)
        verify_forged(os.path.join(service, "agent.sock"))

    def test_root_socket_path_walked_as_the_kernel_does(self):
        # "ok/link/../agent.sock" is the parent of link's target, where a
        # root listener waits in another user's directory; cleaning the
        # path lexically would check "ok/agent.sock", in root's, instead.
        evil = os.path.join(self.dir, "evil")
        os.mkdir(evil, 0o755)
        os.mkdir(os.path.join(evil, "sub"), 0o755)
        os.chown(evil, OTHER_UID, OTHER_UID)
        ok = os.path.join(self.dir, "ok")
        os.mkdir(ok, 0o755)
        open(os.path.join(ok, "agent.sock"), "w").close()
        link = os.path.join(ok, "link")
        os.symlink(os.path.join(evil, "sub"), link)
        os.lchown(link, OTHER_UID, OTHER_UID)
        f = Forger(self.dir, os.path.join(evil, "agent.sock"), 0)
        self.forgers.append(f)
        with self.assertRaises(UntrustedAgent) as cm:
            verify_forged(ok + "/link/../agent.sock")
        self.assertIn(link, str(cm.exception))
        self.forgers.remove(f)
        _, received = f.stop()
        self.assertEqual(received, 0, "the forger received bytes")

    def test_reconnect_checks_again(self):
        # A connection to a trusted agent breaks; the path now answers as
        # another user; the next call connects again and is refused.
        trusted, path = self.forger(OTHER_UID)
        agent = Agent(path, agent_uid=OTHER_UID)
        self.addCleanup(agent.close)
        agent.verify_mac("webhook", "sha256", b"body", bytes(32))
        self.forgers.remove(trusted)
        trusted.stop()
        agent._trusted = agent._trusted - {OTHER_UID}  # the user is no longer trusted
        impostor = Forger(self.dir, path, OTHER_UID)
        self.forgers.append(impostor)
        with self.assertRaises(UntrustedAgent):
            agent.verify_mac("webhook", "sha256", b"body", bytes(32))
        self.forgers.remove(impostor)
        _, received = impostor.stop()
        self.assertEqual(received, 0)


if __name__ == "__main__":
    unittest.main()
