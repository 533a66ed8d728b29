'use strict';
// The connection's life: an agent restart, close, an agent not running,
// the environment's socket path, and servers that misbehave.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const hmacAgent = require('..');
const wire = require('../lib/wire');
const { spawnSync } = require('child_process');
const { AgentProcess, sleep } = require('./support/agent');
const { fakeAgent } = require('./support/fake');
const { keyring, reference } = require('./support/keys');

let proc;
let agent;
let key;

before(async () => {
  proc = new AgentProcess();
  await proc.start();
  agent = new hmacAgent.Agent({ path: proc.socket });
  key = keyring(agent, 'conn');
});

after(async () => {
  agent.close();
  await proc.cleanup();
});

const ref = (alg, secret, ...parts) => reference(wire, alg, secret, ...parts);

test('after the agent restarts, open contexts are ContextLost and new work reconnects', async () => {
  const secret = Buffer.from('restart');
  const name = await key(secret);
  const a = new hmacAgent.Agent({ path: proc.socket });
  const h = hmacAgent.createHmac('sha256', name, { agent: a }).update('before');
  await a.mac(name, 'sha256', 'x'); // the context is open in the agent
  await proc.stop();
  await proc.start();
  h.update('after'); // never throws for the agent's sake
  await assert.rejects(h.digest(), hmacAgent.ContextLost);
  assert.deepStrictEqual(await a.mac(name, 'sha256', 'after'), ref('sha256', secret, 'after'));
  assert.deepStrictEqual(
    await hmacAgent.createHmac('sha256', name, { agent: a }).update('y').digest(),
    ref('sha256', secret, 'y'),
  );
  // The shared test Agent, idle meanwhile, reconnects too.
  assert.deepStrictEqual(await agent.mac(name, 'sha1', 'z'), ref('sha1', secret, 'z'));
  a.close();
});

test('close(): pending and later calls reject with ConnectionLost', async () => {
  const name = await key(Buffer.from('close'));
  const a = new hmacAgent.Agent({ path: proc.socket });
  await a.mac(name, 'sha256', 'x');
  const pending = a.mac(name, 'sha256', 'y');
  const h = hmacAgent.createHmac('sha256', name, { agent: a }).update('z');
  a.close();
  await assert.rejects(pending, hmacAgent.ConnectionLost);
  await assert.rejects(h.digest(), hmacAgent.ContextLost);
  await assert.rejects(a.mac(name, 'sha256', 'x'), hmacAgent.ConnectionLost);
  await assert.rejects(hmacAgent.createHmac('sha256', name, { agent: a }).digest(), hmacAgent.ConnectionLost);
});

test('no agent at the path, or a stale socket file: AgentNotRunning naming the path', async () => {
  const missing = path.join(proc.dir, 'nobody-here.sock');
  const err = await new hmacAgent.Agent({ path: missing }).mac('k', 'sha256', '').catch((e) => e);
  assert.ok(err instanceof hmacAgent.AgentNotRunning, String(err));
  assert.ok(err.message.includes(missing), err.message);
  // A socket file left by a server that died: nothing accepts on it.
  const stale = path.join(proc.dir, 'stale.sock');
  spawnSync(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`,
  ]);
  assert.ok(fs.existsSync(stale), 'a stale socket file');
  const err2 = await new hmacAgent.Agent({ path: stale }).mac('k', 'sha256', '').catch((e) => e);
  assert.ok(err2 instanceof hmacAgent.AgentNotRunning, String(err2));
  assert.ok(err2.message.includes(stale));
});

test('the shared default Agent reads HMAC_AGENT_SOCK', async () => {
  const secret = Buffer.from('env');
  const name = await key(secret);
  const old = process.env.HMAC_AGENT_SOCK;
  process.env.HMAC_AGENT_SOCK = proc.socket;
  try {
    assert.strictEqual(hmacAgent.defaultSocketPath(), proc.socket);
    assert.deepStrictEqual(await hmacAgent.createHmac('sha256', name).update('e').digest(), ref('sha256', secret, 'e'));
    assert.deepStrictEqual(await hmacAgent.mac(name, 'sha224', 'e'), ref('sha224', secret, 'e'));
    await hmacAgent.verifyMac(name, 'sha224', 'e', ref('sha224', secret, 'e'));
    hmacAgent.defaultAgent().close();
  } finally {
    if (old === undefined) delete process.env.HMAC_AGENT_SOCK;
    else process.env.HMAC_AGENT_SOCK = old;
  }
});

test('replies out of order reach their own requests; replies to no request are ignored', async () => {
  const held = [];
  const fake = await fakeAgent((s, type, id, payload) => {
    // Hold each MAC's reply, then answer the batch last-first, with an
    // unsolicited reply in between.
    held.push({ id, tag: crypto.createHash('sha256').update(payload).digest() });
    if (held.length === 50) {
      s.write(wire.frame(wire.MSG.TAG, 0xfffffff0, Buffer.alloc(32)));
      for (const h of held.reverse()) s.write(wire.frame(wire.MSG.TAG, h.id, h.tag));
    }
  });
  const a = new hmacAgent.Agent({ path: fake.path });
  try {
    const want = [];
    const got = [];
    for (let i = 0; i < 50; i++) {
      const data = Buffer.from(`m${i}`);
      want.push(
        crypto
          .createHash('sha256')
          .update(wire.oneShot(0, 3, Buffer.from('k'), data).subarray(9))
          .digest(),
      );
      got.push(a.mac('k', 'sha256', data));
    }
    assert.deepStrictEqual(await Promise.all(got), want);
  } finally {
    a.close();
    await fake.close();
  }
});

test('a server that sends garbage, an oversize frame or a short error fails the calls, not the process', async () => {
  const cases = {
    garbage: (s) => s.write(Buffer.from('00000000deadbeef', 'hex')),
    oversize: (s) => s.write(Buffer.from('7fffffff82', 'hex')),
    'short error': (s, id) => s.write(wire.frame(wire.MSG.ERROR, id, Buffer.from([0]))),
    'wrong reply type': (s, id) => s.write(wire.frame(wire.MSG.DATA, id, Buffer.from('{}'))),
    hangup: (s) => s.destroy(),
  };
  for (const [what, act] of Object.entries(cases)) {
    const fake = await fakeAgent((s, type, id) => act(s, id));
    const a = new hmacAgent.Agent({ path: fake.path });
    const err = await a.mac('k', 'sha256', 'x').catch((e) => e);
    a.close();
    await fake.close();
    assert.ok(err instanceof hmacAgent.ConnectionLost, `${what}: ${err}`);
  }
});

test('a tag of the wrong length is an InternalError, in one shot and from a context', async () => {
  const fake = await fakeAgent((s, type, id) => {
    if (type === wire.MSG.MAC || type === wire.MSG.FINALIZE) s.write(wire.frame(wire.MSG.TAG, id, Buffer.alloc(31)));
    else if (type === wire.MSG.OPEN) s.write(wire.frame(wire.MSG.OK, id));
  });
  const a = new hmacAgent.Agent({ path: fake.path });
  try {
    await assert.rejects(a.mac('k', 'sha256', 'x'), hmacAgent.InternalError);
    await assert.rejects(
      hmacAgent.createHmac('sha256', 'k', { agent: a }).update('x').digest(),
      hmacAgent.InternalError,
    );
  } finally {
    a.close();
    await fake.close();
  }
});

test('a stalled request rejects with RequestTimeout; others go on, and its late reply is dropped', async () => {
  const stalled = [];
  const fake = await fakeAgent((s, type, id, payload) => {
    const slow = payload.includes(Buffer.from('slow'));
    if (type === wire.MSG.OPEN) return s.write(wire.frame(wire.MSG.OK, id));
    if (slow || (type === wire.MSG.FINALIZE && stalled.length === 1)) return stalled.push({ s, id });
    s.write(wire.frame(wire.MSG.TAG, id, Buffer.alloc(32, 7)));
  });
  const a = new hmacAgent.Agent({ path: fake.path, requestTimeout: 200 });
  try {
    const slow = a.mac('slow', 'sha256', 'x');
    assert.deepStrictEqual(await a.mac('fast', 'sha256', 'x'), Buffer.alloc(32, 7), 'not held up by the stalled one');
    await assert.rejects(slow, hmacAgent.RequestTimeout);
    await assert.rejects(
      hmacAgent.createHmac('sha256', 'fast', { agent: a }).update('x').digest(),
      hmacAgent.RequestTimeout,
    );
    assert.strictEqual(stalled.length, 2);
    // The late replies carry IDs still reserved: they reach no other request.
    for (const { s, id } of stalled) s.write(wire.frame(wire.MSG.TAG, id, Buffer.alloc(32, 9)));
    assert.deepStrictEqual(await a.mac('fast', 'sha256', 'y'), Buffer.alloc(32, 7));
    assert.strictEqual(a._current()._waiting, 0, 'nothing holds the process open');
  } finally {
    a.close();
    await fake.close();
  }
});

test('a handshake refused, malformed or never answered', async () => {
  const cases = [
    [
      'version',
      (s, id) =>
        s.write(
          wire.frame(wire.MSG.ERROR, id, Buffer.concat([Buffer.from([0, 15]), Buffer.from('no common version')])),
        ),
      hmacAgent.VersionMismatch,
    ],
    [
      'short reply',
      (s, id) => s.write(wire.frame(wire.MSG.HELLO_REPLY, id, Buffer.alloc(3))),
      hmacAgent.ConnectionLost,
    ],
    [
      'tiny max_frame',
      (s, id) => s.write(wire.frame(wire.MSG.HELLO_REPLY, id, Buffer.from('0001000000100000006400000064', 'hex'))),
      hmacAgent.ConnectionLost,
    ],
    ['silence', () => {}, hmacAgent.ConnectionLost],
  ];
  for (const [what, hello, cls] of cases) {
    const fake = await fakeAgent(Object.assign(() => {}, { hello }));
    const a = new hmacAgent.Agent({ path: fake.path, timeout: 300 });
    const err = await a.mac('k', 'sha256', 'x').catch((e) => e);
    a.close();
    await fake.close();
    assert.ok(err instanceof cls, `${what}: ${err}`);
  }
});

test('a one-shot whose connection dies unanswered is sent once more on a new one; an import is not', async () => {
  let connections = 0;
  const seen = new Map();
  const fake = await fakeAgent(
    Object.assign(
      (s, type, id, payload) => {
        const n = s.n;
        seen.set(type, (seen.get(type) || 0) + 1);
        if (n === 1) return s.destroy(); // the first connection dies with the request unanswered
        if (type === wire.MSG.MAC)
          s.write(wire.frame(wire.MSG.TAG, id, crypto.createHash('sha256').update(payload).digest()));
        else s.write(wire.frame(wire.MSG.DATA, id, Buffer.from('{}')));
      },
      {
        hello(s, id) {
          s.n = ++connections;
          s.write(wire.frame(wire.MSG.HELLO_REPLY, id, Buffer.from('0001001000000000006400000064', 'hex')));
        },
      },
    ),
  );
  const a = new hmacAgent.Agent({ path: fake.path });
  const b = new hmacAgent.Agent({ path: fake.path });
  try {
    const tag = await a.mac('k', 'sha256', 'x');
    assert.deepStrictEqual(
      tag,
      crypto
        .createHash('sha256')
        .update(wire.oneShot(0, 3, Buffer.from('k'), Buffer.from('x')).subarray(9))
        .digest(),
    );
    assert.strictEqual(connections, 2);
    assert.strictEqual(seen.get(wire.MSG.MAC), 2);
    a.close();
    connections = 0;
    await assert.rejects(b.importKey('k', Buffer.from('secret')), hmacAgent.ConnectionLost);
    assert.strictEqual(seen.get(wire.MSG.IMPORT_KEY), 1, 'an import is never sent twice');
  } finally {
    a.close();
    b.close();
    await fake.close();
  }
});

test('a tag longer than any is refused without sending it; the context is closed', async () => {
  const name = await key(Buffer.from('long-tag'));
  const a = new hmacAgent.Agent({ path: proc.socket });
  await a.mac(name, 'sha256', 'x');
  const before = (await a.status()).contexts;
  await assert.rejects(
    hmacAgent
      .createHmac('sha256', name, { agent: a })
      .update('x')
      .verify(Buffer.alloc(1 << 21)),
    hmacAgent.InvalidSignature,
  );
  await sleep(10);
  assert.strictEqual((await a.status()).contexts, before);
  assert.ok(!a._current().broken, 'the connection is intact');
  a.close();
  // The same before the connection is up, when the close is queued.
  const fresh = new hmacAgent.Agent({ path: proc.socket });
  const h = hmacAgent.createHmac('sha256', name, { agent: fresh }).update('x');
  await assert.rejects(h.verify(Buffer.alloc(5000)), hmacAgent.InvalidSignature);
  fresh.close();
});
