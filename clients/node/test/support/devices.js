'use strict';
// Real devices for the tests, in a test's temporary directory: a SoftHSM2
// token made with softhsm2-util and a swtpm process, as a person would
// make them. Each says what is missing when it cannot be had.

const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { sleep } = require('./agent');

const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

/** Why SoftHSM2 cannot be used here, or null. */
function softhsmMissing() {
  if (!fs.existsSync(SOFTHSM_MODULE)) return `SoftHSM2 module ${SOFTHSM_MODULE} is missing (apt-get install softhsm2)`;
  if (spawnSync('softhsm2-util', ['--version']).error) return 'softhsm2-util is missing (apt-get install softhsm2)';
  return null;
}

/**
 * A new token labelled label under dir/softhsm, and a PIN file for the
 * agent. Returns {env, toml}: the environment the agent needs
 * (SOFTHSM2_CONF) and a [[provider]] table for it named name.
 */
function softhsmToken(dir, name, label) {
  const root = path.join(dir, 'softhsm');
  fs.mkdirSync(path.join(root, 'tokens'), { recursive: true, mode: 0o700 });
  const conf = path.join(root, 'softhsm2.conf');
  fs.writeFileSync(
    conf,
    `directories.tokendir = ${path.join(root, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`,
    { mode: 0o600 },
  );
  const env = { SOFTHSM2_CONF: conf };
  // Long PINs, so that none turns up by chance in a log line.
  const pin = 'node-test-user-pin-4321';
  execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', label, '--so-pin', 'node-test-so-pin-8765', '--pin', pin],
    { env: { ...process.env, ...env }, stdio: 'pipe' },
  );
  const pinFile = path.join(root, 'pin');
  fs.writeFileSync(pinFile, pin, { mode: 0o600 });
  const toml = `[[provider]]
name = "${name}"
type = "pkcs11"
module = "${SOFTHSM_MODULE}"
token = "${label}"
pin_file = "${pinFile}"
`;
  return { env, toml };
}

/** Why swtpm cannot be used here, or null. */
function swtpmMissing() {
  if (spawnSync('swtpm', ['--version']).error) return 'swtpm is missing (apt-get install swtpm)';
  return null;
}

/**
 * A swtpm process serving a new TPM under dir/swtpm. Returns {toml, stop}:
 * a [[provider]] table for it named name, and a function that ends the
 * process (the test must call it, also when it fails).
 */
async function swtpm(dir, name) {
  const root = path.join(dir, 'swtpm');
  const state = path.join(root, 'state');
  fs.mkdirSync(state, { recursive: true, mode: 0o700 });
  const sock = path.join(root, 'sock');
  const pidFile = path.join(root, 'pid');
  execFileSync(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${state}`,
      '--server',
      `type=unixio,path=${sock}`,
      '--ctrl',
      `type=unixio,path=${sock}.ctrl`,
      '--flags',
      'not-need-init,startup-clear',
      '--pid',
      `file=${pidFile}`,
      '--daemon',
    ],
    { stdio: 'pipe' },
  );
  let pid = 0;
  for (let i = 0; i < 200 && !pid; i++) {
    if (fs.existsSync(pidFile)) pid = Number(fs.readFileSync(pidFile, 'utf8').trim()) || 0;
    if (!pid) await sleep(10);
  }
  if (!pid) throw new Error(`swtpm wrote no pid file at ${pidFile}`);
  const keys = path.join(dir, 'tpm-keys');
  fs.mkdirSync(keys, { mode: 0o700 });
  const toml = `[[provider]]
name = "${name}"
type = "tpm"
device = "unix:${sock}"
state_dir = "${keys}"
`;
  const stop = async () => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (err) {
      if (err.code !== 'ESRCH') throw err;
      return;
    }
    // Wait for it to go, so that its directory can be removed.
    for (let i = 0; i < 500; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(10);
    }
  };
  return { toml, stop };
}

module.exports = { softhsmMissing, softhsmToken, swtpmMissing, swtpm };
