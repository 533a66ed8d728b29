'use strict';
// The Hmac object and the Agent against a real agent: crypto.createHmac's
// shape, pyca's finalize and verify rules, streams, and many operations
// at once on one connection.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const stream = require('stream');
const v8 = require('v8');
const vm = require('vm');
const { execFile } = require('child_process');
const hmacAgent = require('..');
const wire = require('../lib/wire');
const { AgentProcess, sleep } = require('./support/agent');
const { keyring, reference } = require('./support/keys');

const { createHmac, Agent } = hmacAgent;

let proc;
let agent;
let key;
const SECRET = Buffer.from('node-behaviour-key');

before(async () => {
  proc = new AgentProcess();
  await proc.start();
  agent = new Agent({ path: proc.socket });
  key = keyring(agent);
});

after(async () => {
  agent.close();
  await proc.cleanup();
});

const ref = (alg, secret, ...parts) => reference(wire, alg, secret, ...parts);

test('digest gives the same tag as crypto.createHmac, as a Buffer or in an encoding', async () => {
  const name = await key(SECRET);
  const h = createHmac('sha256', name, { agent });
  assert.strictEqual(h.update('hello ').update(Buffer.from('world')), h, 'update returns the Hmac');
  assert.deepStrictEqual(await h.digest(), ref('sha256', SECRET, 'hello world'));
  for (const enc of ['hex', 'base64', 'base64url', 'latin1']) {
    const tag = await createHmac('sha512', name, { agent }).update('x').digest(enc);
    assert.strictEqual(tag, crypto.createHmac('sha512', SECRET).update('x').digest(enc), enc);
  }
});

test('after digest or verify: update throws and copy, digest and verify reject with AlreadyFinalized', async () => {
  const name = await key(SECRET);
  for (const end of ['digest', 'verify-ok', 'verify-bad']) {
    const h = createHmac('sha256', name, { agent }).update('abc');
    if (end === 'digest') await h.digest();
    else if (end === 'verify-ok') await h.verify(ref('sha256', SECRET, 'abc'));
    else await assert.rejects(h.verify(Buffer.alloc(32)), hmacAgent.InvalidSignature);
    assert.throws(() => h.update('x'), hmacAgent.AlreadyFinalized, end);
    await assert.rejects(h.copy(), hmacAgent.AlreadyFinalized, end);
    await assert.rejects(h.digest(), hmacAgent.AlreadyFinalized, end);
    await assert.rejects(h.verify(Buffer.alloc(32)), hmacAgent.AlreadyFinalized, end);
  }
});

test('a tag of any other length is InvalidSignature, through a context and in one shot', async () => {
  const name = await key(SECRET);
  const tag = ref('sha256', SECRET, 'm');
  const wrong = [
    Buffer.alloc(0),
    tag.subarray(0, 31),
    Buffer.concat([tag, Buffer.alloc(1)]),
    tag.subarray(0, 16),
    Buffer.alloc(300),
    Buffer.alloc(5000),
  ];
  for (const sig of wrong) {
    const h = createHmac('sha256', name, { agent }).update('m');
    await assert.rejects(h.verify(sig), hmacAgent.InvalidSignature, `${sig.length} bytes`);
    await assert.rejects(agent.verifyMac(name, 'sha256', 'm', sig), hmacAgent.InvalidSignature, `${sig.length} bytes`);
  }
  await agent.verifyMac(name, 'sha256', 'm', tag);
  await agent.verifyMac(name, 'sha256', 'm', tag.toString('hex'), 'hex');
  await createHmac('sha256', name, { agent }).update('m').verify(tag.toString('base64'), 'base64');
  const err = await createHmac('sha256', name, { agent })
    .verify(Buffer.alloc(32))
    .catch((e) => e);
  assert.strictEqual(err.code, 'invalid_signature');
  assert.strictEqual(err.wireCode, 2);
});

test('update takes what crypto.Hmac.update takes', async () => {
  const name = await key(SECRET);
  const bytes = Buffer.from('0123456789abcdef');
  const h = createHmac('sha256', name, { agent });
  h.update('caf\u00e9');
  h.update('636166c3a9', 'hex');
  h.update('Y2Fmw6k=', 'base64');
  h.update('caf\u00e9', 'latin1');
  h.update(new Uint8Array(bytes).subarray(2, 6));
  h.update(new DataView(bytes.buffer, bytes.byteOffset + 6, 4));
  h.update(new Uint16Array([0x4142, 0x4344]));
  h.update(Buffer.alloc(0));
  h.update('');
  const want = crypto.createHmac('sha256', SECRET);
  want.update('caf\u00e9');
  want.update('636166c3a9', 'hex');
  want.update('Y2Fmw6k=', 'base64');
  want.update('caf\u00e9', 'latin1');
  want.update(new Uint8Array(bytes).subarray(2, 6));
  want.update(new DataView(bytes.buffer, bytes.byteOffset + 6, 4));
  want.update(new Uint16Array([0x4142, 0x4344]));
  assert.deepStrictEqual(await h.digest(), want.digest());
  for (const bad of [42, null, {}, [1, 2], new ArrayBuffer(4)]) {
    assert.throws(() => createHmac('sha256', name, { agent }).update(bad), TypeError);
  }
  const ok = createHmac('sha256', name, { agent });
  await assert.rejects(ok.verify('abcd'), TypeError, 'a string signature needs its encoding');
});

test('the caller may reuse its buffer as soon as update returns, connected or not', async () => {
  const name = await key(SECRET);
  for (const fresh of [false, true]) {
    const a = fresh ? new Agent({ path: proc.socket }) : agent; // a fresh Agent queues until it connects
    const buf = Buffer.from('first');
    const h = createHmac('sha256', name, { agent: a });
    h.update(buf);
    buf.write('XXXXX');
    h.update(buf);
    assert.deepStrictEqual(await h.digest(), ref('sha256', SECRET, 'first', 'XXXXX'), fresh ? 'queued' : 'connected');
    if (fresh) a.close();
  }
});

test("algorithm names: the agent's and Node's; unknown ones throw UnsupportedAlgorithm at once", async () => {
  const name = await key(SECRET);
  const pairs = [
    ['sha3-256', 'sha3_256'],
    ['SHA256', 'sha256'],
    ['sha512-256', 'sha512_256'],
    ['RSA-SHA256', null],
    ['shake128', null],
    ['ripemd160', null],
  ];
  for (const [given, agentName] of pairs) {
    if (agentName) {
      const h = createHmac(given, name, { agent });
      assert.strictEqual(h.algorithm, agentName);
      assert.deepStrictEqual(await h.update('x').digest(), ref(agentName, SECRET, 'x'));
    } else {
      assert.throws(() => createHmac(given, name, { agent }), hmacAgent.UnsupportedAlgorithm, given);
      await assert.rejects(agent.mac(name, given, 'x'), hmacAgent.UnsupportedAlgorithm, given);
    }
  }
  assert.throws(() => createHmac(hmacAgent, name, { agent }), TypeError);
});

test('a key is named, never given as bytes; a missing key is KeyNotFound naming it', async () => {
  assert.throws(() => createHmac('sha256', Buffer.from('secret'), { agent }), /not key bytes/);
  assert.throws(() => createHmac('sha256', crypto.createSecretKey(Buffer.from('k')), { agent }), /not key bytes/);
  const h = createHmac('sha256', 'no-such-key', { agent }).update('data');
  const err = await h.digest().catch((e) => e);
  assert.ok(err instanceof hmacAgent.KeyNotFound, String(err));
  assert.match(err.message, /no-such-key/);
  await assert.rejects(createHmac('sha1', 'no-such-key', { agent }).copy(), hmacAgent.KeyNotFound);
  await assert.rejects(createHmac('sha1', 'no-such-key', { agent }).verify(Buffer.alloc(20)), hmacAgent.KeyNotFound);
  await assert.rejects(agent.mac('no-such-key', 'sha256', 'x'), hmacAgent.KeyNotFound);
  await assert.rejects(agent.mac('k'.repeat(300), 'sha256', 'x'), hmacAgent.KeyNotFound);
});

test('copy is independent of its source, and sees only what came before it', async () => {
  const name = await key(SECRET);
  const h = createHmac('sha512', name, { agent }).update('abc');
  const pending = h.copy();
  h.update('def'); // after copy(): not in the copy
  const c = await pending;
  c.update('xyz');
  const cc = await c.copy();
  assert.deepStrictEqual(await h.digest(), ref('sha512', SECRET, 'abcdef'));
  assert.deepStrictEqual(await c.digest(), ref('sha512', SECRET, 'abcxyz'));
  await cc.verify(ref('sha512', SECRET, 'abcxyz'));
  assert.throws(() => c.update('x'), hmacAgent.AlreadyFinalized);
});

test('work queued before the connection is up goes out in order once it is', async () => {
  const a = new Agent({ path: proc.socket });
  const name = await key(SECRET);
  const h = createHmac('sha384', name, { agent: a }).update('one');
  const copied = h.copy();
  h.update('two');
  const tag = h.digest();
  const c = await copied;
  assert.deepStrictEqual(await tag, ref('sha384', SECRET, 'one', 'two'));
  assert.deepStrictEqual(await c.update('three').digest(), ref('sha384', SECRET, 'one', 'three'));
  a.close();
});

test('streams longer than a frame, through a context and in one shot', async () => {
  const name = await key(SECRET);
  const msg = crypto.randomBytes(3 << 20);
  const h = createHmac('sha256', name, { agent });
  h.update(msg.subarray(0, 1000));
  h.update(msg.subarray(1000));
  const want = ref('sha256', SECRET, msg);
  assert.deepStrictEqual(await h.digest(), want);
  assert.deepStrictEqual(await agent.mac(name, 'sha256', msg), want);
  await agent.verifyMac(name, 'sha256', msg, want);
});

test('a file piped into the Hmac as a Writable', async () => {
  const name = await key(SECRET);
  const file = path.join(proc.dir, 'piped.bin');
  const data = crypto.randomBytes((5 << 20) + 123);
  fs.writeFileSync(file, data);
  const h = createHmac('sha256', name, { agent });
  await stream.promises.pipeline(fs.createReadStream(file, { highWaterMark: 64 << 10 }), h);
  assert.deepStrictEqual(await h.digest(), ref('sha256', SECRET, data));
  // The older .pipe() form, with digest() on 'finish'.
  const piped = createHmac('sha256', name, { agent });
  fs.createReadStream(file).pipe(piped);
  await new Promise((resolve) => piped.once('finish', resolve));
  assert.strictEqual(await piped.digest('hex'), ref('sha256', SECRET, data).toString('hex'));
});

test('digest right after end() includes every chunk the stream still held', async () => {
  // Chunks written while the Writable waits for the socket to drain sit in
  // its buffer; digest() must wait for them, not finalize without them.
  const name = await key(SECRET);
  const chunk = crypto.randomBytes(256 << 10);
  const h = createHmac('sha256', name, { agent, highWaterMark: 1 << 20 });
  let n = 0;
  for (; n < 64; n++) h.write(chunk);
  h.end('tail');
  assert.ok(h.writableLength > 0, 'the stream holds chunks');
  const parts = Array(n)
    .fill(chunk)
    .concat([Buffer.from('tail')]);
  assert.deepStrictEqual(await h.digest(), ref('sha256', SECRET, ...parts));
  const errors = [];
  h.on('error', (e) => errors.push(e));
  h.write('late', (e) => errors.push(e));
  await sleep(10);
  assert.ok(errors.length > 0 && errors.every((e) => e.code !== undefined), 'a write after digest fails');
});

test('thousands of operations at once share one connection and each gets its own answer', async () => {
  const name = await key(Buffer.from('many'));
  const connectionsBefore = (await agent.status()).connections;
  const a = new Agent({ path: proc.socket });
  const jobs = [];
  for (let i = 0; i < 3000; i++) {
    const msg = `message ${i}`;
    const want = ref('sha256', Buffer.from('many'), msg);
    if (i % 3 === 0) jobs.push(a.mac(name, 'sha256', msg).then((t) => assert.deepStrictEqual(t, want, msg)));
    else if (i % 3 === 1) jobs.push(a.verifyMac(name, 'sha256', msg, want));
    else {
      const h = createHmac('sha256', name, { agent: a });
      for (let b = 0; b < msg.length; b += 4) h.update(msg.slice(b, b + 4));
      jobs.push(i % 2 ? h.verify(want) : h.digest().then((t) => assert.deepStrictEqual(t, want, msg)));
    }
  }
  await Promise.all(jobs);
  const status = await agent.status();
  assert.strictEqual(status.connections, connectionsBefore + 1, 'one connection for all of them');
  a.close();
});

test('an Hmac dropped without digest is closed in the agent when collected; destroy() closes it at once', async () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc');
  const name = await key(SECRET);
  const a = new Agent({ path: proc.socket });
  await a.mac(name, 'sha256', 'connect');
  const contexts = async () => (await a.status()).contexts;
  const base = await contexts();
  (() => {
    for (let i = 0; i < 100; i++) createHmac('sha256', name, { agent: a }).update('dropped');
  })();
  assert.strictEqual(await contexts(), base + 100);
  for (let i = 0; i < 50 && (await contexts()) > base; i++) {
    gc();
    await sleep(20);
  }
  assert.strictEqual(await contexts(), base, 'abandoned contexts were closed');
  const h = createHmac('sha256', name, { agent: a }).update('x');
  assert.strictEqual(await contexts(), base + 1);
  h.destroy();
  assert.strictEqual(await contexts(), base);
  a.close();
});

test('keys imported with the CLI (`keys import NAME -`) are usable, and keys() lists them', async () => {
  const secret = crypto.randomBytes(40);
  proc.cli(['keys', 'import', 'node-cli-key', '-'], secret);
  assert.deepStrictEqual(await agent.mac('node-cli-key', 'sha1', 'x'), ref('sha1', secret, 'x'));
  const listed = (await agent.keys()).find((k) => k.name === 'node-cli-key');
  assert.ok(listed && listed.algorithms.includes('sha256'));
  await assert.rejects(agent.importKey('node-cli-key', secret), hmacAgent.KeyExists);
  await agent.deleteKey('node-cli-key');
  await assert.rejects(agent.mac('node-cli-key', 'sha1', 'x'), hmacAgent.KeyNotFound);
});

test('an idle Agent does not keep the process alive', async () => {
  const name = await key(SECRET);
  const script = `const h = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    h.mac(${JSON.stringify(name)}, 'sha256', 'x').then((t) => console.log(t.toString('hex')));`;
  const out = await new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['-e', script],
      { env: { ...process.env, HMAC_AGENT_SOCK: proc.socket }, timeout: 20000 },
      (err, stdout) => (err ? reject(err) : resolve(stdout)),
    );
  });
  assert.strictEqual(out.trim(), ref('sha256', SECRET, 'x').toString('hex'));
});
