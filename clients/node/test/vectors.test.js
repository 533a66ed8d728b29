'use strict';
// The Wycheproof and RFC 2202/4231 vectors from ../shared/vectors (or
// $HMAC_AGENT_VECTORS) through a real agent: each key imported raw, each
// message through a context and in one shot.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const hmacAgent = require('..');
const wire = require('../lib/wire');
const { AgentProcess, vectorsDir } = require('./support/agent');
const { keyring } = require('./support/keys');
const { softwareAlgorithms } = require('./support/algorithms');

let proc;
let agent;
let key;
let algorithms;

before(async () => {
  proc = new AgentProcess();
  await proc.start();
  agent = new hmacAgent.Agent({ path: proc.socket });
  key = keyring(agent, 'vec');
  algorithms = await softwareAlgorithms(agent, await key(Buffer.from('probe')));
});

after(async () => {
  agent.close();
  await proc.cleanup();
});

async function checkVector(alg, secret, msg, tag, valid, label) {
  const name = await key(secret);
  const full = await agent.mac(name, alg, msg);
  assert.strictEqual(full.length, wire.ALGORITHMS[alg].size, label);
  assert.strictEqual(full.subarray(0, tag.length).equals(tag), valid, label);
  if (tag.length !== full.length) return; // a truncated tag: the agent verifies full-length tags only
  const h = hmacAgent.createHmac(alg, name, { agent });
  h.update(msg.subarray(0, msg.length >> 1)).update(msg.subarray(msg.length >> 1));
  if (valid) {
    await h.verify(tag);
    await agent.verifyMac(name, alg, msg, tag);
  } else {
    await assert.rejects(h.verify(tag), hmacAgent.InvalidSignature, label);
    await assert.rejects(agent.verifyMac(name, alg, msg, tag), hmacAgent.InvalidSignature, label);
  }
}

test('Wycheproof: every vector for every algorithm the agent has', async (t) => {
  const dir = path.join(vectorsDir(), 'wycheproof');
  const counts = {};
  let total = 0;
  for (const alg of algorithms) {
    const file = path.join(dir, `hmac_${alg}_test.json`);
    if (!fs.existsSync(file)) continue; // Wycheproof has no HMAC vectors for MD5 or BLAKE2
    const data = JSON.parse(fs.readFileSync(file, 'utf8'));
    const jobs = [];
    for (const group of data.testGroups) {
      for (const v of group.tests) {
        const [secret, msg, tag] = [v.key, v.msg, v.tag].map((h) => Buffer.from(h, 'hex'));
        jobs.push(checkVector(alg, secret, msg, tag, v.result === 'valid', `${alg} tcId ${v.tcId}`));
      }
    }
    await Promise.all(jobs);
    assert.strictEqual(jobs.length, data.numberOfTests, alg);
    counts[alg] = jobs.length;
    total += jobs.length;
  }
  t.diagnostic(`wycheproof: ${total} vectors: ${JSON.stringify(counts)}`);
  // The eleven algorithms of the first protocol version alone have 1906.
  assert.ok(total >= 1906, `${total} vectors`);
});

test('RFC 2202 and RFC 4231', async (t) => {
  const dir = path.join(vectorsDir(), 'rfc');
  const files = {
    'rfc-2202-sha1.txt': 'sha1',
    'rfc-4231-sha224.txt': 'sha224',
    'rfc-4231-sha256.txt': 'sha256',
    'rfc-4231-sha384.txt': 'sha384',
    'rfc-4231-sha512.txt': 'sha512',
  };
  let count = 0;
  for (const [file, alg] of Object.entries(files)) {
    let c = {};
    for (const raw of fs.readFileSync(path.join(dir, file), 'utf8').split('\n')) {
      const line = raw.trim();
      if (!line || line[0] === '#' || line[0] === '[') continue;
      const [field, value] = line.split(' = ');
      c[field] = value;
      if (field !== 'MD') continue;
      const msg = Buffer.from(c.Msg, 'hex').subarray(0, Number(c.Len) / 8);
      const h = hmacAgent.createHmac(alg, await key(Buffer.from(c.Key, 'hex')), { agent });
      assert.strictEqual(await h.update(msg).digest('hex'), value, `${file} case ${count}`);
      count++;
      c = {};
    }
  }
  t.diagnostic(`rfc: ${count} vectors`);
  assert.strictEqual(count, 31);
});
