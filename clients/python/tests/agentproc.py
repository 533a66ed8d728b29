"""Starts a real hmac-agent for the tests: $HMAC_AGENT_BIN, or built from
this repository with `go build`."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def vectors_dir():
    return os.environ.get("HMAC_AGENT_VECTORS") or os.path.join(os.path.dirname(REPO), "shared", "vectors")


class AgentProcess:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hmac-agent-py-")
        self.socket = os.path.join(self.dir, "run", "agent.sock")
        self.binary = os.environ.get("HMAC_AGENT_BIN")
        if not self.binary:
            self.binary = os.path.join(self.dir, "hmac-agent")
            subprocess.run(["go", "build", "-o", self.binary, "./cmd/hmac-agent"], cwd=REPO, check=True)
        self.proc = None
        self.log = open(os.path.join(self.dir, "agent.log"), "wb")

    def start(self):
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(self.dir, "state"))
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--socket", self.socket, "--log-level", "warn"],
            env=env, stdout=self.log, stderr=self.log,
        )
        deadline = time.time() + 10
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.socket)
                s.close()
                return
            except OSError:
                s.close()
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("hmac-agent did not start; see %s" % self.log.name)
                time.sleep(0.02)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cleanup(self):
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
