"""A forging agent, for the tests: the impostor another local user would
plant at the agent's socket path. It completes the handshake, says every
tag is valid, returns all-zero tags and accepts every key. It prints
"listening", then "accepted" per connection and "received N" per read;
on SIGTERM it lets queued connections in, waits for them, and exits.

    python3 forger.py SOCKET_PATH
"""

import json
import os
import signal
import socket
import struct
import sys
import threading

OK, HELLO_REPLY, TAG, DATA = 0x80, 0x81, 0x82, 0x83
HELLO, MAC, FINALIZE, UPDATE, CLOSE = 0x01, 0x20, 0x13, 0x11, 0x15
JSON_REPLIES = (0x30, 0x31, 0x32, 0x34, 0x35)
out_lock = threading.Lock()


def note(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def reply(conn, msg_type, request_id, payload=b""):
    conn.sendall(struct.pack(">IBI", 5 + len(payload), msg_type, request_id) + payload)


def serve(conn):
    buf = b""
    with conn:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            note("received %d" % len(chunk))
            buf += chunk
            while len(buf) >= 4:
                (length,) = struct.unpack_from(">I", buf)
                if len(buf) < 4 + length:
                    break
                msg_type, request_id = struct.unpack_from(">BI", buf, 4)
                buf = buf[4 + length :]
                if msg_type == HELLO:
                    reply(conn, HELLO_REPLY, request_id, struct.pack(">HIII", 1, 1 << 20, 64, 64))
                elif msg_type in (MAC, FINALIZE):
                    reply(conn, TAG, request_id, bytes(32))
                elif msg_type in JSON_REPLIES:
                    reply(conn, DATA, request_id, json.dumps({"name": "forged", "provider": "soft"}).encode())
                elif msg_type not in (UPDATE, CLOSE):
                    reply(conn, OK, request_id)


def main():
    path = sys.argv[1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # Short accept timeouts, so a SIGTERM is seen; after it, one more
    # round takes in connections still queued.
    listener.settimeout(0.1)
    note("listening")
    threads = []
    while True:
        stop = stopping.is_set()
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            if stop:
                break
            continue
        note("accepted")
        conn.settimeout(None)
        t = threading.Thread(target=serve, args=(conn,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(2)


if __name__ == "__main__":
    main()
