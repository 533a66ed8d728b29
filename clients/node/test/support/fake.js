'use strict';
// A server of the test's own (the test's uid, in a private directory) that
// answers the handshake and then does what the test says: a peer that
// misbehaves, or one that speaks only protocol version 1.

const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const wire = require('../../lib/wire');

/** A HELLO_REPLY payload choosing the given protocol version. */
function helloReply(version = 1) {
  const p = Buffer.alloc(14);
  p.writeUInt16BE(version, 0);
  p.writeUInt32BE(1 << 20, 2);
  p.writeUInt32BE(100, 6);
  p.writeUInt32BE(100, 10);
  return p;
}

/**
 * Listens on a new socket and calls onFrame(socket, type, id, payload) for
 * every frame after HELLO. HELLO is answered choosing protocol version
 * onFrame.version (by default 1, as an agent from before key versions
 * would), or by onFrame.hello(socket, id, payload) when given.
 */
async function fakeAgent(onFrame) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmac-agent-fake-'));
  const sock = path.join(dir, 'agent.sock');
  const sockets = new Set();
  const server = net.createServer((s) => {
    sockets.add(s);
    const d = new wire.FrameDecoder(1 << 22);
    s.on('error', () => {});
    s.on('data', (chunk) =>
      d.push(chunk, (type, id, payload) => {
        if (type === wire.MSG.HELLO) {
          if (onFrame.hello) return onFrame.hello(s, id, payload);
          return s.write(
            wire.frame(wire.MSG.HELLO_REPLY, id, helloReply(onFrame.version === undefined ? 1 : onFrame.version)),
          );
        }
        onFrame(s, type, id, payload);
      }),
    );
  });
  await new Promise((resolve) => server.listen(sock, resolve));
  return {
    path: sock,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

module.exports = { fakeAgent, helloReply };
