'use strict';
// Key policies through the client: a caller of another uid (65534, run
// with setpriv, in the socket's group) gets PermissionDenied where its
// policy says so, can verify with a verify-only key, and cannot manage
// keys. Needs root; with CI set, its absence fails the test.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const hmacAgent = require('..');
const { AgentProcess } = require('./support/agent');

const OTHER = 65534; // nobody, primary group nogroup (65534)
const PKG = path.resolve(__dirname, '..');

function missingParts() {
  if (process.getuid() !== 0) return 'root is needed to run a client as another uid';
  if (spawnSync('setpriv', ['--version']).error) return 'setpriv (util-linux) is missing';
  if (spawnSync('getent', ['group', String(OTHER)]).status !== 0) return `no group ${OTHER}`;
  return null;
}
const missing = missingParts();
if (missing && process.env.CI) {
  test('the policy tests can run', () => assert.fail(`${missing}, and CI is set`));
}

let proc;
const secrets = { vo: crypto.randomBytes(32), mk: crypto.randomBytes(32), ro: crypto.randomBytes(32) };

before(async () => {
  if (missing) return;
  proc = new AgentProcess({
    config: (dir) => ({
      socket: path.join(dir, 'run', 'agent.sock'),
      toml: `socket = "${path.join(dir, 'run', 'agent.sock')}"
socket_group = "${OTHER}"

[[provider]]
name = "soft"
type = "software"
path = "${path.join(dir, 'keys')}"

[[key]]
name = "verify-only"
provider = "soft"
object = "vo"
[key.policy]
users = [${OTHER}]
operations = ["verify"]

[[key]]
name = "mac-ok"
provider = "soft"
object = "mk"
[key.policy]
users = [${OTHER}]
`,
    }),
  });
  fs.chmodSync(proc.dir, 0o755); // the other uid must reach the socket's directory
  await proc.start();
  const owner = new hmacAgent.Agent({ path: proc.socket });
  for (const [object, secret] of Object.entries(secrets)) await owner.importKey(object, secret, { provider: 'soft' });
  owner.close();
});

after(async () => {
  if (proc) await proc.cleanup();
});

// Runs as the other uid: each step's outcome, as the name of the error
// class or "ok" (with the tag for a MAC).
const CLIENT = `
const h = require(process.argv[1]);
const tag = Buffer.from(process.argv[2], 'hex');
const steps = {
  'mac verify-only': () => h.mac('verify-only', 'sha256', 'body'),
  'digest verify-only': () => h.createHmac('sha256', 'verify-only').update('body').digest(),
  'verifyMac verify-only': () => h.verifyMac('verify-only', 'sha256', 'body', tag),
  'verify verify-only': () => h.createHmac('sha256', 'verify-only').update('body').verify(tag),
  'verify verify-only, wrong tag': () => h.createHmac('sha256', 'verify-only').update('body').verify(Buffer.alloc(32)),
  'mac mac-ok': () => h.mac('mac-ok', 'sha256', 'body'),
  'mac ro (no policy: the owner only)': () => h.mac('ro', 'sha256', 'body'),
  'importKey': () => h.defaultAgent().importKey('planted', Buffer.from('k'), { provider: 'soft' }),
  'deleteKey': () => h.defaultAgent().deleteKey('mac-ok'),
};
(async () => {
  const out = {};
  for (const [name, step] of Object.entries(steps)) {
    try {
      const r = await step();
      out[name] = Buffer.isBuffer(r) ? 'ok ' + r.toString('hex') : 'ok';
    } catch (e) {
      out[name] = e.name;
    }
  }
  console.log(JSON.stringify(out));
})();
`;

test(
  'a caller of another uid gets what its key policies allow, and PermissionDenied for the rest',
  { skip: missing || false },
  () => {
    const hmac = (object) => crypto.createHmac('sha256', secrets[object]).update('body').digest('hex');
    const r = spawnSync(
      'setpriv',
      [`--reuid=${OTHER}`, `--regid=${OTHER}`, '--clear-groups', process.execPath, '-e', CLIENT, PKG, hmac('vo')],
      { env: { ...process.env, HMAC_AGENT_SOCK: proc.socket, HMAC_AGENT_UID: '' }, encoding: 'utf8', timeout: 30000 },
    );
    assert.strictEqual(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    const denied = ['PermissionDenied', 'KeyNotFound']; // an agent may hide keys a caller may not use
    assert.deepStrictEqual(
      {
        ...out,
        'mac ro (no policy: the owner only)': denied.includes(out['mac ro (no policy: the owner only)']),
      },
      {
        'mac verify-only': 'PermissionDenied',
        'digest verify-only': 'PermissionDenied',
        'verifyMac verify-only': 'ok',
        'verify verify-only': 'ok',
        'verify verify-only, wrong tag': 'InvalidSignature',
        'mac mac-ok': `ok ${hmac('mk')}`,
        'mac ro (no policy: the owner only)': true,
        importKey: 'PermissionDenied',
        deleteKey: 'PermissionDenied',
      },
    );
  },
);
