'use strict';
// Key versions through the client on real devices: a SoftHSM2 token and a
// swtpm TPM behind one agent. Imported versions' tags are checked against
// crypto.createHmac, generated ones by the agent's own verification.
// Without SoftHSM2 or swtpm a device's test skips, unless CI is set, when
// it fails.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const hmacAgent = require('..');
const { AgentProcess } = require('./support/agent');
const { softhsmMissing, softhsmToken, swtpmMissing, swtpm } = require('./support/devices');

const { createHmac, Agent } = hmacAgent;

const missing = { hsm: softhsmMissing(), tpm: swtpmMissing() };
for (const [provider, why] of Object.entries(missing)) {
  if (why && process.env.CI) {
    test(`the ${provider} versions test can run`, () => assert.fail(`${why}, and CI is set`));
  }
}

let devDir;
let tpm = null;
let proc = null;
let agent;

before(async () => {
  if (missing.hsm && missing.tpm) return;
  devDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmac-agent-node-devices-'));
  let providers = '';
  let env = {};
  if (!missing.hsm) {
    const token = softhsmToken(devDir, 'hsm', 'node-versions');
    providers += token.toml;
    env = { ...env, ...token.env };
  }
  if (!missing.tpm) {
    tpm = await swtpm(devDir, 'tpm');
    providers += tpm.toml;
  }
  proc = new AgentProcess({
    config: (dir) => ({
      socket: path.join(dir, 'run', 'agent.sock'),
      env,
      toml: `socket = "${path.join(dir, 'run', 'agent.sock')}"\n\n${providers}`,
    }),
  });
  await proc.start();
  agent = new Agent({ path: proc.socket });
});

after(async () => {
  if (agent) agent.close();
  if (proc) await proc.cleanup();
  if (tpm) await tpm.stop();
  if (devDir) fs.rmSync(devDir, { recursive: true, force: true });
});

const tagOf = (alg, secret, ...parts) => {
  const h = crypto.createHmac(alg, secret);
  for (const p of parts) h.update(p);
  return h.digest();
};

for (const provider of ['hsm', 'tpm']) {
  test(
    `key versions on ${provider === 'hsm' ? 'a SoftHSM2 token' : 'swtpm'}`,
    { skip: missing[provider] || false },
    async () => {
      const name = `node-${provider}-${crypto.randomBytes(4).toString('hex')}`;
      const one = crypto.randomBytes(32);
      const two = crypto.randomBytes(32);
      const msg = Buffer.from('device payload');
      const info = await agent.importKey(name, one, { provider });
      assert.strictEqual(info.provider, provider);
      for (const alg of ['sha256', 'sha512']) {
        assert.deepStrictEqual(await agent.macVersioned(name, alg, msg), { tag: tagOf(alg, one, msg), version: 1 });
      }

      // A context opened before the rotation keeps version 1, through copy.
      const before = createHmac('sha256', name, { agent }).update(msg.subarray(0, 6));
      assert.strictEqual((await agent.rotateKey(name, { secret: two })).version, 2);
      const copied = await before.copy();
      before.update(msg.subarray(6));
      copied.update(msg.subarray(6));
      assert.deepStrictEqual(await before.digest(), tagOf('sha256', one, msg));
      assert.strictEqual(before.keyVersion, 1);
      assert.deepStrictEqual(await copied.digest(), tagOf('sha256', one, msg));
      assert.strictEqual(copied.keyVersion, 1);

      const now = createHmac('sha256', name, { agent }).update(msg);
      assert.deepStrictEqual(await now.digest(), tagOf('sha256', two, msg));
      assert.strictEqual(now.keyVersion, 2);
      assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tagOf('sha256', one, msg)), 1);
      assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tagOf('sha256', two, msg)), 2);
      const old = createHmac('sha512', name, { agent }).update(msg);
      await old.verify(tagOf('sha512', one, msg));
      assert.strictEqual(old.keyVersion, 1);
      assert.deepStrictEqual(await agent.macVersioned(`${name}@1`, 'sha256', msg), {
        tag: tagOf('sha256', one, msg),
        version: 1,
      });

      // A version generated inside the device: its tags verify as version 3.
      assert.strictEqual((await agent.rotateKey(name)).version, 3);
      const { tag, version } = await agent.macVersioned(name, 'sha256', msg);
      assert.strictEqual(version, 3);
      assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tag), 3);
      await assert.rejects(agent.verifyMac(`${name}@2`, 'sha256', msg, tag), hmacAgent.InvalidSignature);

      await agent.retireVersion(name, 1, { destroy: true });
      await assert.rejects(agent.verifyMac(name, 'sha256', msg, tagOf('sha256', one, msg)), hmacAgent.InvalidSignature);
      await assert.rejects(agent.mac(`${name}@1`, 'sha256', msg), hmacAgent.KeyNotFound);
      assert.strictEqual(await agent.verifyMacVersioned(name, 'sha256', msg, tagOf('sha256', two, msg)), 2);
      const listed = (await agent.keys()).find((k) => k.name === name);
      assert.strictEqual(listed.version, 3);
      assert.deepStrictEqual(
        listed.versions.map((v) => v.state),
        ['destroyed', 'previous', 'current'],
      );
      await agent.deleteKey(name, { provider });
    },
  );
}
