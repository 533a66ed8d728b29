'use strict';
// Tags from the agent equal crypto.createHmac's with the same key, for
// every algorithm the agent's software provider has, at random split
// points and copies, through contexts and one-shots. (Node's Hmac has no
// copy: a copy is checked against the message up to the copy point.)

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const crypto = require('crypto');
const hmacAgent = require('..');
const wire = require('../lib/wire');
const { AgentProcess } = require('./support/agent');
const { keyring } = require('./support/keys');
const { LATER, softwareAlgorithms, nodeHas } = require('./support/algorithms');

let proc;
let agent;
let key;
let algorithms;

before(async () => {
  proc = new AgentProcess();
  await proc.start();
  agent = new hmacAgent.Agent({ path: proc.socket });
  key = keyring(agent, 'parity');
  algorithms = await softwareAlgorithms(agent, await key(Buffer.from('probe')));
});

after(async () => {
  agent.close();
  await proc.cleanup();
});

function prng(seed) {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

test('random keys, splits and copies match crypto.createHmac for every algorithm the agent has', async (t) => {
  const rand = prng(21);
  let checked = 0;
  for (const alg of algorithms) {
    if (!nodeHas(alg)) {
      // Nothing to compare with in this Node; that must not pass unseen in CI.
      if (process.env.CI) assert.fail(`this Node's crypto lacks ${wire.ALGORITHMS[alg].node}`);
      t.diagnostic(`not compared: this Node's crypto lacks ${wire.ALGORITHMS[alg].node}`);
      continue;
    }
    const nodeName = wire.ALGORITHMS[alg].node;
    for (let round = 0; round < 8; round++) {
      // Keys from empty to past every block size (SHA3-224's is 144 bytes).
      const secret = crypto.randomBytes(rand(200));
      const name = await key(secret);
      const ours = hmacAgent.createHmac(alg, name, { agent });
      const theirs = crypto.createHmac(nodeName, secret);
      const branches = [];
      const message = [];
      for (let n = 1 + rand(8); n > 0; n--) {
        const part = crypto.randomBytes(rand(4) === 0 ? rand(200000) : rand(3000));
        ours.update(part);
        theirs.update(part);
        message.push(part);
        if (rand(10) < 4) branches.push({ ours: ours.copy(), prefix: message.slice() });
      }
      const tag = theirs.digest();
      assert.deepStrictEqual(await ours.digest(), tag, `${alg} key ${secret.length} bytes`);
      assert.deepStrictEqual(await agent.mac(name, alg, Buffer.concat(message)), tag, `${alg} one-shot`);
      await agent.verifyMac(name, alg, Buffer.concat(message), tag);
      for (const b of branches) {
        const copy = await b.ours;
        copy.update('tail');
        const want = crypto.createHmac(nodeName, secret).update(Buffer.concat(b.prefix)).update('tail').digest();
        await copy.verify(want);
      }
      checked++;
    }
  }
  t.diagnostic(`${algorithms.length} algorithms, ${checked} messages compared`);
  assert.ok(checked >= 11 * 8);
});

test('empty keys and messages', async () => {
  const name = await key(Buffer.alloc(0));
  for (const alg of algorithms.filter(nodeHas)) {
    const want = crypto.createHmac(wire.ALGORITHMS[alg].node, Buffer.alloc(0)).digest();
    assert.deepStrictEqual(await hmacAgent.createHmac(alg, name, { agent }).digest(), want, alg);
    assert.deepStrictEqual(await agent.mac(name, alg, ''), want, alg);
    assert.strictEqual(want.length, wire.ALGORITHMS[alg].size, alg);
  }
});

test('algorithms the agent does not have yet are refused as UnsupportedAlgorithm, and only those', async (t) => {
  const name = await key(Buffer.from('later'));
  const absent = Object.keys(wire.ALGORITHMS).filter((a) => !algorithms.includes(a));
  for (const alg of absent) {
    assert.ok(LATER.includes(alg), alg);
    await assert.rejects(
      hmacAgent.createHmac(alg, name, { agent }).update('x').digest(),
      hmacAgent.UnsupportedAlgorithm,
      alg,
    );
    await assert.rejects(agent.mac(name, alg, 'x'), hmacAgent.UnsupportedAlgorithm, alg);
  }
  t.diagnostic(`tested: ${algorithms.join(' ')}; not in this agent yet: ${absent.join(' ') || 'none'}`);
});
