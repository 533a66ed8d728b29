"""Load for TestTPMStallHoldsUpNothingElse through Python's default Agent.

Threads send one-shot MACs on the software, PKCS#11 and TPM keys over the
one connection of hmac_agent.default_agent() ($HMAC_AGENT_SOCK) for the
seconds given, and print per key the requests made, the p50, p99 and
longest time in seconds, and the errors by class name, as JSON.
"""

import hashlib
import hmac
import json
import sys
import threading
import time

import hmac_agent

seconds, secret = float(sys.argv[1]), sys.argv[2].encode()
keys = {"soft-key": 2, "hsm-key": 2, "tpm-key": 1}
msg = b"webhook body"
want = hmac.new(secret, msg, hashlib.sha256).digest()
agent = hmac_agent.default_agent()
results = {k: {"times": [], "errors": {}} for k in keys}
lock = threading.Lock()
end = time.monotonic() + seconds


def work(key):
    times, errors = [], {}
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            tag = agent.mac(key, "sha256", msg)
            if tag != want:
                errors["WrongTag"] = errors.get("WrongTag", 0) + 1
        except hmac_agent.AgentError as e:
            name = type(e).__name__
            if name == "Unavailable" and '"tpm"' not in str(e):
                name = "UnavailableWithoutProvider"
            errors[name] = errors.get(name, 0) + 1
            time.sleep(0.001)
        times.append(time.monotonic() - start)
    with lock:
        results[key]["times"] += times
        for k, v in errors.items():
            results[key]["errors"][k] = results[key]["errors"].get(k, 0) + v


threads = [threading.Thread(target=work, args=(k,)) for k, n in keys.items() for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out = {}
for key, r in results.items():
    t = sorted(r["times"])
    out[key] = {
        "requests": len(t),
        "p50": t[len(t) // 2] if t else 0,
        "p99": t[len(t) * 99 // 100] if t else 0,
        "longest": t[-1] if t else 0,
        "errors": r["errors"],
    }
print(json.dumps(out))
