'use strict';
// Key versions through the client (docs/keys.md): protocol version 2
// negotiated with a real agent, the key version named with every tag and
// verification, NAME@N, rotation and retirement, a previous version
// verifying during its grace and not after; and a peer that speaks
// protocol version 1 alone, or answers in the wrong version's words.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const crypto = require('crypto');
const path = require('path');
const hmacAgent = require('..');
const wire = require('../lib/wire');
const { AgentProcess, sleep } = require('./support/agent');
const { fakeAgent } = require('./support/fake');

const { createHmac, Agent } = hmacAgent;
const { MSG } = wire;

let proc;
let agent;

before(async () => {
  proc = new AgentProcess();
  await proc.start();
  agent = new Agent({ path: proc.socket });
});

after(async () => {
  agent.close();
  await proc.cleanup();
});

const tagOf = (secret, ...parts) => {
  const h = crypto.createHmac('sha256', secret);
  for (const p of parts) h.update(p);
  return h.digest();
};

/** A key of its own for each test, with the given secret as version 1. */
async function newKey(a, secret) {
  const name = `ver-${crypto.randomBytes(6).toString('hex')}`;
  await a.importKey(name, secret);
  return name;
}

test('the client offers protocol versions 1 to 2 and the agent chooses 2', async () => {
  const a = new Agent({ path: proc.socket });
  try {
    await a.keys();
    assert.strictEqual(a._current().protocolVersion, 2);
  } finally {
    a.close();
  }
});

test('tags and verifications name the key version; a context keeps its version through rotation and copy', async () => {
  const one = crypto.randomBytes(32);
  const two = crypto.randomBytes(32);
  const name = await newKey(agent, one);
  const msg = Buffer.from('payload');
  assert.deepStrictEqual(await agent.macVersioned(name, 'sha256', msg), { tag: tagOf(one, msg), version: 1 });

  const before = createHmac('sha256', name, { agent }).update(msg.subarray(0, 3));
  assert.strictEqual(before.keyVersion, null, 'no version before the tag');
  const info = await agent.rotateKey(name, { secret: two });
  assert.strictEqual(info.version, 2);
  assert.strictEqual(info.state, 'current');
  assert.ok(!Number.isNaN(Date.parse(info.created)), info.created);
  const copied = await before.copy();
  before.update(msg.subarray(3));
  copied.update(msg.subarray(3));
  assert.deepStrictEqual(await before.digest(), tagOf(one, msg));
  assert.strictEqual(before.keyVersion, 1);
  assert.deepStrictEqual(await copied.digest(), tagOf(one, msg));
  assert.strictEqual(copied.keyVersion, 1);

  // The crypto.createHmac shape is unchanged: mac and digest give tags.
  assert.deepStrictEqual(await agent.mac(name, 'sha256', msg), tagOf(two, msg));
  const h = createHmac('sha256', name, { agent }).update(msg);
  assert.strictEqual(await h.digest('hex'), tagOf(two, msg).toString('hex'));
  assert.strictEqual(h.keyVersion, 2);

  // A plain name verifies every live version and says which matched;
  // verifyMac resolves as it always did.
  assert.strictEqual(await agent.verifyMac(name, 'sha256', msg, tagOf(one, msg)), undefined);
  assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tagOf(one, msg)), 1);
  assert.strictEqual(
    await agent.verifyMacVersioned(name, 'sha256', msg, tagOf(two, msg).toString('base64'), 'base64'),
    2,
  );
  for (const [secret, version] of [
    [one, 1],
    [two, 2],
  ]) {
    const v = createHmac('sha256', name, { agent }).update(msg);
    assert.strictEqual(await v.verify(tagOf(secret, msg)), undefined, 'verify resolves as it always did');
    assert.strictEqual(v.keyVersion, version);
  }
  const wrong = createHmac('sha256', name, { agent }).update(msg);
  await assert.rejects(wrong.verify(tagOf(crypto.randomBytes(32), msg)), hmacAgent.InvalidSignature);
  assert.strictEqual(wrong.keyVersion, null, 'no version for a tag that matched none');

  // Longer than one frame, the one-shots stream through a context and
  // still name the version.
  const big = crypto.randomBytes(1536 * 1024);
  assert.deepStrictEqual(await agent.macVersioned(name, 'sha256', big), { tag: tagOf(two, big), version: 2 });
  assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', big, tagOf(one, big)), 1);
});

test('NAME@N is version N alone, in one-shots and contexts', async () => {
  const one = crypto.randomBytes(32);
  const two = crypto.randomBytes(32);
  const name = await newKey(agent, one);
  await agent.rotateKey(name, { secret: two });
  const msg = Buffer.from('pinned');

  assert.deepStrictEqual(await agent.macVersioned(`${name}@1`, 'sha256', msg), { tag: tagOf(one, msg), version: 1 });
  assert.deepStrictEqual(await agent.macVersioned(`${name}@2`, 'sha256', msg), { tag: tagOf(two, msg), version: 2 });
  const h = createHmac('sha256', `${name}@1`, { agent }).update(msg);
  assert.deepStrictEqual(await h.digest(), tagOf(one, msg));
  assert.strictEqual(h.keyVersion, 1);

  assert.strictEqual(await agent.verifyMacVersioned(`${name}@1`, 'sha256', msg, tagOf(one, msg)), 1);
  await assert.rejects(agent.verifyMac(`${name}@1`, 'sha256', msg, tagOf(two, msg)), hmacAgent.InvalidSignature);
  await assert.rejects(
    createHmac('sha256', `${name}@2`, { agent }).update(msg).verify(tagOf(one, msg)),
    hmacAgent.InvalidSignature,
  );

  // A version that does not exist, and malformed suffixes, name no key.
  for (const bad of [`${name}@3`, `${name}@0`, `${name}@01`, `${name}@x`, `${name}@`, `${name}@-1`]) {
    await assert.rejects(agent.mac(bad, 'sha256', msg), hmacAgent.KeyNotFound, bad);
    await assert.rejects(createHmac('sha256', bad, { agent }).update(msg).digest(), hmacAgent.KeyNotFound, bad);
  }
});

test('rotateKey and retireVersion: generated and imported versions, retire, destroy, and refusals', async () => {
  const one = crypto.randomBytes(32);
  const name = await newKey(agent, one);
  const msg = Buffer.from('lifecycle');

  const generated = await agent.rotateKey(name, { length: 48 });
  assert.strictEqual(generated.version, 2);
  const { tag: tag2, version } = await agent.macVersioned(name, 'sha256', msg);
  assert.strictEqual(version, 2);
  assert.notDeepStrictEqual(tag2, tagOf(one, msg));
  const three = crypto.randomBytes(20);
  assert.strictEqual((await agent.rotateKey(name, { secret: three })).version, 3);
  assert.strictEqual((await agent.rotateKey(name, { secret: null })).version, 4, 'generated, of the default length');

  // Retiring the current version is refused; retiring an older one stops
  // it verifying at once, and the others go on.
  await assert.rejects(agent.retireVersion(name, 4), (err) => {
    assert.ok(err instanceof hmacAgent.InvalidArgument, String(err));
    assert.match(err.message, /current version/);
    return true;
  });
  await assert.rejects(agent.retireVersion(name, 9), hmacAgent.KeyNotFound);
  await assert.rejects(agent.retireVersion('no-such-key', 1), hmacAgent.KeyNotFound);
  assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tagOf(one, msg)), 1);
  await agent.retireVersion(name, 1);
  await assert.rejects(agent.verifyMac(name, 'sha256', msg, tagOf(one, msg)), hmacAgent.InvalidSignature);
  await assert.rejects(agent.mac(`${name}@1`, 'sha256', msg), hmacAgent.KeyNotFound);
  assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tag2), 2);
  assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tagOf(three, msg)), 3);

  await agent.retireVersion(name, 1, { destroy: true });
  await agent.retireVersion(name, 2, { destroy: true });
  await assert.rejects(agent.verifyMac(name, 'sha256', msg, tag2), hmacAgent.InvalidSignature);
  const listed = (await agent.keys()).find((k) => k.name === name);
  assert.strictEqual(listed.version, 4);
  assert.deepStrictEqual(
    listed.versions.map((v) => [v.version, v.state]),
    [
      [1, 'destroyed'],
      [2, 'destroyed'],
      [3, 'previous'],
      [4, 'current'],
    ],
  );
  // A destroyed version's number is never used again.
  assert.strictEqual((await agent.rotateKey(name)).version, 5);

  // Only the agent's own names: a key that does not exist cannot be
  // rotated, and arguments out of range are refused before sending.
  await assert.rejects(agent.rotateKey('no-such-key'), hmacAgent.KeyNotFound);
  // Each would name version 3 if cut to 32 bits or to a whole number.
  for (const bad of [0, -1, 3.5, 2 ** 32 + 3, NaN, '3', [3], undefined]) {
    await assert.rejects(agent.retireVersion(name, bad), hmacAgent.InvalidArgument, String(bad));
  }
  for (const bad of [-1, 0.5, 2 ** 32, '32']) {
    await assert.rejects(agent.rotateKey(name, { length: bad }), hmacAgent.InvalidArgument, String(bad));
  }
  const after = (await agent.keys()).find((k) => k.name === name);
  assert.deepStrictEqual(
    after.versions.map((v) => v.state),
    ['destroyed', 'destroyed', 'previous', 'previous', 'current'],
    'no refused call reached the agent',
  );
});

test('a previous version verifies during its grace and is retired after it', async () => {
  const graced = new AgentProcess({
    config: (dir) => ({
      socket: path.join(dir, 'run', 'agent.sock'),
      toml: `socket = "${path.join(dir, 'run', 'agent.sock')}"
version_refresh = "100ms"

[[provider]]
name = "soft"
type = "software"
path = "${path.join(dir, 'keys')}"

[[key]]
name = "long-grace"
provider = "soft"
verify_grace = "1h"

[[key]]
name = "short-grace"
provider = "soft"
verify_grace = "1s"
`,
    }),
  });
  await graced.start();
  const a = new Agent({ path: graced.socket });
  try {
    const msg = Buffer.from('graced');
    const one = crypto.randomBytes(32);
    const two = crypto.randomBytes(32);
    for (const name of ['long-grace', 'short-grace']) {
      await a.importKey(name, one, { provider: 'soft' });
      await a.rotateKey(name, { secret: two });
    }
    // Within the hour's grace, version 1's tag verifies, and says so.
    assert.strictEqual(await a.verifyMacVersioned('long-grace', 'sha256', msg, tagOf(one, msg)), 1);
    const h = createHmac('sha256', 'long-grace', { agent: a }).update(msg);
    await h.verify(tagOf(one, msg));
    assert.strictEqual(h.keyVersion, 1);
    assert.deepStrictEqual(await a.macVersioned('long-grace', 'sha256', msg), { tag: tagOf(two, msg), version: 2 });
    const long = (await a.keys()).find((k) => k.name === 'long-grace');
    assert.strictEqual(long.versions[0].state, 'previous');
    assert.ok(
      Date.parse(long.versions[0].verifies_until) > Date.now() + 30 * 60 * 1000,
      long.versions[0].verifies_until,
    );

    // Past a second's grace version 1's tag stops verifying and the agent
    // retires the version in its provider; version 2's tag goes on.
    const deadline = Date.now() + 30000;
    for (;;) {
      const err = await a.verifyMac('short-grace', 'sha256', msg, tagOf(one, msg)).then(
        () => null,
        (e) => e,
      );
      const short = (await a.keys()).find((k) => k.name === 'short-grace');
      if (err && short.versions[0].state === 'retired') {
        assert.ok(err instanceof hmacAgent.InvalidSignature, String(err));
        assert.ok(short.versions[0].retired, 'the retirement has its time');
        break;
      }
      assert.ok(Date.now() < deadline, `30 s after a 1 s grace: ${err}, ${JSON.stringify(short.versions[0])}`);
      await sleep(100);
    }
    await assert.rejects(a.verifyMac('short-grace', 'sha256', msg, tagOf(one, msg)), hmacAgent.InvalidSignature);
    assert.strictEqual(await a.verifyMacVersioned('short-grace', 'sha256', msg, tagOf(two, msg)), 2);
  } finally {
    a.close();
    await graced.cleanup();
  }
});

// Replies of a peer of protocol version 1: tags as TAG, verifications as
// OK. Tags are SHA-256 of the request's payload, so each answers its own
// request.
function versionOnePeer(seen) {
  return Object.assign(
    (s, type, id, payload) => {
      seen.push(type);
      const tag = crypto.createHash('sha256').update(payload).digest();
      switch (type) {
        case MSG.MAC:
        case MSG.FINALIZE:
          return s.write(wire.frame(MSG.TAG, id, tag));
        case MSG.OPEN:
        case MSG.COPY:
        case MSG.VERIFY:
        case MSG.VERIFY_MAC:
        case MSG.RETIRE_VERSION:
          return s.write(wire.frame(MSG.OK, id));
        case MSG.ROTATE_KEY:
          return s.write(wire.frame(MSG.DATA, id, Buffer.from('{"version":2,"state":"current"}')));
        default:
          return undefined;
      }
    },
    {
      hello(s, id, payload) {
        seen.push(payload.toString('hex'));
        s.write(wire.frame(MSG.HELLO_REPLY, id, Buffer.from('0001001000000000006400000064', 'hex')));
      },
    },
  );
}

test('a peer of protocol version 1: the same calls work, and name no version', async () => {
  const seen = [];
  const fake = await fakeAgent(versionOnePeer(seen));
  const a = new Agent({ path: fake.path });
  try {
    const tag = await a.mac('k', 'sha256', 'x');
    assert.deepStrictEqual(
      tag,
      crypto
        .createHash('sha256')
        .update(wire.oneShot(0, 3, Buffer.from('k'), Buffer.from('x')).subarray(9))
        .digest(),
    );
    assert.strictEqual(seen[0], '484d414300010002', 'HELLO offered versions 1 to 2');
    assert.strictEqual(a._current().protocolVersion, 1);
    assert.deepStrictEqual(await a.macVersioned('k', 'sha256', 'x'), { tag, version: null });
    assert.strictEqual(await a.verifyMacVersioned('k', 'sha256', 'x', tag), null);

    const h = createHmac('sha256', 'k', { agent: a }).update('x');
    const c = await h.copy();
    assert.strictEqual((await h.digest()).length, 32);
    assert.strictEqual(h.keyVersion, null);
    await c.verify(Buffer.alloc(32));
    assert.strictEqual(c.keyVersion, null);
    // Key management is the same on either version.
    assert.strictEqual((await a.rotateKey('k')).version, 2);
    await a.retireVersion('k', 1);
    assert.ok(!a._current().broken, 'the connection is intact');
  } finally {
    a.close();
    await fake.close();
  }
});

test('a reply in the other version’s words, or a malformed one, is never a tag or a valid signature', async () => {
  const tag = Buffer.alloc(32, 7);
  const cases = [
    // [what, chosen version, reply to MAC/FINALIZE, reply to VERIFY_MAC/VERIFY, error]
    ['TAG_VERSION on version 1', 1, wire.frame.bind(null, MSG.TAG_VERSION), null, hmacAgent.ConnectionLost],
    ['VERIFIED on version 1', 1, null, (id) => wire.frame(MSG.VERIFIED, id, wire.u32(1)), hmacAgent.ConnectionLost],
    ['TAG on version 2', 2, (id) => wire.frame(MSG.TAG, id, tag), null, hmacAgent.ConnectionLost],
    ['OK on version 2', 2, null, (id) => wire.frame(MSG.OK, id), hmacAgent.ConnectionLost],
    ['short VERIFIED', 2, null, (id) => wire.frame(MSG.VERIFIED, id, Buffer.alloc(3)), hmacAgent.InternalError],
    ['VERIFIED of version 0', 2, null, (id) => wire.frame(MSG.VERIFIED, id, wire.u32(0)), hmacAgent.InternalError],
    [
      'TAG_VERSION without its version',
      2,
      (id) => wire.frame(MSG.TAG_VERSION, id, Buffer.alloc(3)),
      null,
      hmacAgent.InternalError,
    ],
    [
      'TAG_VERSION with a short tag',
      2,
      (id) => wire.frame(MSG.TAG_VERSION, id, Buffer.concat([wire.u32(1), tag.subarray(1)])),
      null,
      hmacAgent.InternalError,
    ],
  ];
  for (const [what, version, onTag, onVerify, cls] of cases) {
    const fake = await fakeAgent(
      Object.assign(
        (s, type, id, payload) => {
          if (type === MSG.OPEN) return s.write(wire.frame(MSG.OK, id));
          if (type === MSG.MAC || type === MSG.FINALIZE) {
            return s.write(onTag ? onTag(id, Buffer.concat([wire.u32(1), tag])) : wire.frame(MSG.TAG, id, tag));
          }
          if (type === MSG.VERIFY_MAC || type === MSG.VERIFY) {
            return s.write(onVerify ? onVerify(id) : wire.frame(MSG.OK, id));
          }
          return undefined;
        },
        { version },
      ),
    );
    const a = new Agent({ path: fake.path });
    try {
      if (onTag) {
        await assert.rejects(a.mac('k', 'sha256', 'x'), cls, what);
        const h = createHmac('sha256', 'k', { agent: a }).update('x');
        await assert.rejects(h.digest(), cls, what);
        assert.strictEqual(h.keyVersion, null, what);
      }
      if (onVerify) {
        await assert.rejects(a.verifyMac('k', 'sha256', 'x', tag), cls, what);
        await assert.rejects(a.verifyMacVersioned('k', 'sha256', 'x', tag), cls, what);
        const h = createHmac('sha256', 'k', { agent: a }).update('x');
        await assert.rejects(h.verify(tag), cls, what);
        assert.strictEqual(h.keyVersion, null, what);
      }
    } finally {
      a.close();
      await fake.close();
    }
  }
});

test('an agent choosing a protocol version outside 1..2 is refused', async () => {
  for (const version of [0, 3, 0xffff]) {
    const fake = await fakeAgent(Object.assign(() => assert.fail('nothing is sent after the handshake'), { version }));
    const a = new Agent({ path: fake.path });
    try {
      const err = await a.mac('k', 'sha256', 'x').catch((e) => e);
      assert.ok(err instanceof hmacAgent.VersionMismatch, `version ${version}: ${err}`);
      assert.match(err.message, new RegExp(`chose protocol version ${version}\\b`));
    } finally {
      a.close();
      await fake.close();
    }
  }
});

test('a one-shot sent again after a reconnection is read by the new connection’s version', async () => {
  let connections = 0;
  const fake = await fakeAgent(
    Object.assign(
      (s, type, id, payload) => {
        if (s.n === 1) return s.destroy(); // version 2, dies with the request unanswered
        const tag = crypto.createHash('sha256').update(payload).digest();
        s.write(wire.frame(MSG.TAG, id, tag));
      },
      {
        hello(s, id) {
          s.n = ++connections;
          const version = s.n === 1 ? '0002' : '0001';
          s.write(wire.frame(MSG.HELLO_REPLY, id, Buffer.from(`${version}001000000000006400000064`, 'hex')));
        },
      },
    ),
  );
  const a = new Agent({ path: fake.path });
  try {
    const { tag, version } = await a.macVersioned('k', 'sha256', 'x');
    assert.strictEqual(connections, 2);
    assert.strictEqual(version, null);
    assert.strictEqual(tag.length, 32);
  } finally {
    a.close();
    await fake.close();
  }
});

test('a rotation or retirement whose connection dies unanswered is never sent twice', async () => {
  const seen = new Map();
  const fake = await fakeAgent(
    Object.assign(
      (s, type) => {
        seen.set(type, (seen.get(type) || 0) + 1);
        s.destroy();
      },
      { version: 2 },
    ),
  );
  const a = new Agent({ path: fake.path });
  try {
    await assert.rejects(a.rotateKey('k', { secret: Buffer.from('new secret') }), hmacAgent.ConnectionLost);
    await assert.rejects(a.retireVersion('k', 1, { destroy: true }), hmacAgent.ConnectionLost);
    assert.strictEqual(seen.get(MSG.ROTATE_KEY), 1);
    assert.strictEqual(seen.get(MSG.RETIRE_VERSION), 1);
  } finally {
    a.close();
    await fake.close();
  }
});
