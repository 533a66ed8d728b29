"""Python client speed beside pyca/cryptography's in-process HMAC.

    python3 clients/python/bench.py            # starts its own agent
    HMAC_AGENT_SOCK=... python3 bench.py --socket-from-env

Reports one-shot 64-byte MACs per second and streaming MB/s, each beside
cryptography's in-process HMAC measured in the same run.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hmac_agent import HMAC, Agent  # noqa: E402

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as pyca_hmac
except ImportError:
    hashes = None


def rate(fn, seconds=2.0):
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main():
    proc = None
    if "--socket-from-env" in sys.argv:
        agent = Agent()
    else:
        from tests.agentproc import AgentProcess

        proc = AgentProcess()
        proc.start()
        agent = Agent(proc.socket)
    secret = os.urandom(32)
    agent.import_key("py-bench-%d" % os.getpid(), secret)
    name = "py-bench-%d" % os.getpid()
    msg = os.urandom(64)
    chunk = os.urandom(64 << 10)
    rows = []

    rows.append(("oneshot_ops (agent.mac, 64 B)", rate(lambda: agent.mac(name, "sha256", msg)), "ops/s"))

    def stream_agent():
        h = HMAC(name, "sha256", agent=agent)
        for _ in range(256):
            h.update(chunk)
        h.finalize()

    rows.append(("stream_mbps (agent, 16 MiB)", 16 * rate(stream_agent), "MB/s"))
    if hashes is not None:
        def oneshot_pyca():
            h = pyca_hmac.HMAC(secret, hashes.SHA256())
            h.update(msg)
            h.finalize()

        def stream_pyca():
            h = pyca_hmac.HMAC(secret, hashes.SHA256())
            for _ in range(256):
                h.update(chunk)
            h.finalize()

        rows.append(("inprocess_ops (cryptography, 64 B)", rate(oneshot_pyca), "ops/s"))
        rows.append(("inprocess_stream_mbps (cryptography, 16 MiB)", 16 * rate(stream_pyca), "MB/s"))
    for label, value, unit in rows:
        print("%-48s %12.1f %s" % (label, value, unit))
    agent.close()
    if proc is not None:
        proc.cleanup()


if __name__ == "__main__":
    main()
