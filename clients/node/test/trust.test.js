'use strict';
// The client authenticates the agent before sending anything: servers
// bound by another uid (a real process under uid 65534), symlinks that
// uid planted on the way, and a directory others may write are refused
// with UntrustedAgent, and the server receives nothing, not even HELLO.
// The accepted cases (root, the client's own uid, HMAC_AGENT_UID and the
// agentUid option, by uid or user name) work.
//
// Needs root (to run a server as another uid) and setpriv; with CI set,
// their absence fails the tests instead of skipping them.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const readline = require('readline');
const hmacAgent = require('..');
const { AgentProcess } = require('./support/agent');

const OTHER = 65534; // nobody
const PKG = path.resolve(__dirname, '..');

function missingParts() {
  if (process.getuid() !== 0) return 'root is needed to run a server as another uid';
  if (spawnSync('setpriv', ['--version']).error) return 'setpriv (util-linux) is missing';
  return null;
}
const missing = missingParts();
if (missing && process.env.CI) {
  test('the trust tests can run', () => assert.fail(`${missing}, and CI is set`));
}
const opts = { skip: missing || false };

let base;
let proc;

before(async () => {
  if (missing) return;
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'hmac-agent-trust-'));
  fs.chmodSync(base, 0o755);
  for (const [dir, uid, mode] of [
    ['theirs', OTHER, 0o755], // another uid's own directory
    ['shared', 0, 0o1777], // like /tmp: anyone may add, only owners remove
    ['open', 0, 0o777], // writable by all, without the sticky bit
  ]) {
    fs.mkdirSync(path.join(base, dir));
    fs.chownSync(path.join(base, dir), uid, uid);
    fs.chmodSync(path.join(base, dir), mode);
  }
  proc = new AgentProcess();
  await proc.start();
});

after(async () => {
  if (missing) return;
  await proc.cleanup();
  fs.rmSync(base, { recursive: true, force: true });
});

// A server run as uid 65534 that answers like an agent (HELLO_REPLY, then
// a zero tag to anything) and reports every connection and byte it gets.
const FAKE = `
const net = require('net');
const path = process.argv[1];
let conns = 0, bytes = 0;
const open = new Set();
const report = () => process.stdout.write(JSON.stringify({ conns, bytes }) + '\\n');
const server = net.createServer((s) => {
  conns++;
  open.add(s);
  report();
  s.on('error', () => {});
  s.on('data', (d) => {
    bytes += d.length;
    report();
    for (let off = 0; off + 9 <= d.length; ) {
      const len = d.readUInt32BE(off), type = d[off + 4], id = d.readUInt32BE(off + 5);
      if (type === 0x01) s.write(Buffer.from('0000001381' + id.toString(16).padStart(8, '0') + '0001001000000000400000000100', 'hex'));
      else { const f = Buffer.alloc(41); f.writeUInt32BE(37, 0); f[4] = 0x82; f.writeUInt32BE(id, 5); s.write(f); }
      off += 4 + len;
    }
  });
}).listen(path, () => process.stdout.write('listening\\n'));
process.stdin.on('end', () => {
  for (const s of open) s.destroy();
  server.close(() => process.exit(0));
}).resume();
`;

class OtherUIDServer {
  static async start(socketPath) {
    fs.rmSync(socketPath, { force: true });
    const child = spawn(
      'setpriv',
      [`--reuid=${OTHER}`, `--regid=${OTHER}`, '--clear-groups', process.execPath, '-e', FAKE, socketPath],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    );
    const s = new OtherUIDServer();
    s.child = child;
    s.seen = { conns: 0, bytes: 0 };
    const lines = readline.createInterface({ input: child.stdout });
    await new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`fake server exited ${code}`)));
      lines.on('line', (line) => {
        if (line === 'listening') return resolve();
        s.seen = JSON.parse(line);
      });
    });
    assert.strictEqual(fs.lstatSync(socketPath).uid, OTHER, 'the socket belongs to the other uid');
    return s;
  }

  async stop() {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    await exited;
  }
}

/** An in-process server of the test's own uid that records what it gets. */
async function ownServer(socketPath) {
  const seen = { conns: 0, bytes: 0 };
  const server = net.createServer((s) => {
    seen.conns++;
    s.on('data', (d) => {
      seen.bytes += d.length;
    });
  });
  await new Promise((resolve) => server.listen(socketPath, resolve));
  return { seen, close: () => new Promise((resolve) => server.close(resolve)) };
}

async function refused(socketPath, options = {}) {
  const a = new hmacAgent.Agent({ path: socketPath, ...options });
  const err = await a.mac('webhook', 'sha256', 'forged?').catch((e) => e);
  a.close();
  assert.ok(err instanceof hmacAgent.UntrustedAgent, `expected UntrustedAgent, got ${err && err.stack}`);
  assert.strictEqual(err.code, 'untrusted_agent');
  assert.ok(err.message.includes(socketPath), err.message);
  return err;
}

test("a socket bound by another uid in that uid's directory is refused; it receives nothing", opts, async () => {
  const sock = path.join(base, 'theirs', 'agent.sock');
  const fake = await OtherUIDServer.start(sock);
  try {
    const err = await refused(sock);
    assert.match(err.message, new RegExp(`uid ${OTHER}`));
    await refused(sock, { agentUid: 1 }); // another uid accepted, but not this one
    // A verify and a key import are refused the same way.
    const a = new hmacAgent.Agent({ path: sock });
    await assert.rejects(a.verifyMac('webhook', 'sha256', 'body', Buffer.alloc(32)), hmacAgent.UntrustedAgent);
    await assert.rejects(a.importKey('stolen', Buffer.from('key bytes')), hmacAgent.UntrustedAgent);
    await assert.rejects(
      hmacAgent.createHmac('sha256', 'webhook', { agent: a }).update('x').digest(),
      hmacAgent.UntrustedAgent,
    );
    a.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepStrictEqual(fake.seen, { conns: 0, bytes: 0 });
  } finally {
    await fake.stop();
  }
});

test('a socket another uid bound in a shared sticky directory (like /tmp) is refused', opts, async () => {
  const sock = path.join(base, 'shared', 'agent.sock');
  const fake = await OtherUIDServer.start(sock);
  try {
    const err = await refused(sock);
    assert.match(err.message, /the socket on the way/);
    assert.deepStrictEqual(fake.seen, { conns: 0, bytes: 0 });
  } finally {
    await fake.stop();
    fs.rmSync(sock, { force: true });
  }
});

test('symlinks another uid planted on the way are refused, even one to the real agent', opts, async () => {
  const theirs = path.join(base, 'theirs', 'agent.sock');
  const fake = await OtherUIDServer.start(theirs);
  const asOther = (target, link) => {
    const r = spawnSync('setpriv', [
      `--reuid=${OTHER}`,
      `--regid=${OTHER}`,
      '--clear-groups',
      'ln',
      '-s',
      target,
      link,
    ]);
    assert.strictEqual(r.status, 0, String(r.stderr));
    assert.strictEqual(fs.lstatSync(link).uid, OTHER);
  };
  try {
    // A directory name the real agent would use, squatted by a symlink.
    asOther(path.join(base, 'theirs'), path.join(base, 'shared', 'hmac-agent-0'));
    const err = await refused(path.join(base, 'shared', 'hmac-agent-0', 'agent.sock'));
    assert.match(err.message, /a symlink on the way/);
    // The socket itself a symlink: to their server, or to the real agent
    // (which they could point elsewhere at any moment).
    asOther(theirs, path.join(base, 'shared', 'to-theirs.sock'));
    await refused(path.join(base, 'shared', 'to-theirs.sock'));
    asOther(proc.socket, path.join(base, 'shared', 'to-real.sock'));
    await refused(path.join(base, 'shared', 'to-real.sock'));
    assert.deepStrictEqual(fake.seen, { conns: 0, bytes: 0 });
  } finally {
    await fake.stop();
  }
});

test(
  'a directory on the way that others may write (no sticky bit) is refused, even with our own server in it',
  opts,
  async () => {
    const sock = path.join(base, 'open', 'agent.sock');
    const own = await ownServer(sock);
    try {
      const err = await refused(sock);
      assert.match(err.message, /mode 0777\) is writable by others/);
      assert.deepStrictEqual(own.seen, { conns: 0, bytes: 0 });
    } finally {
      await own.close();
    }
  },
);

test('link/.. is resolved as the kernel does, from the target, through our link or theirs', opts, async () => {
  // "ok/link/../agent.sock" reaches the other uid's server through the
  // link; resolving the path lexically would check "ok/agent.sock", a
  // socket of our own in a directory of ours, instead, and then connect
  // to theirs. With a link of our own nothing else on the way is amiss,
  // so only following ".." from where the link leads finds their server.
  const sub = path.join(base, 'theirs', 'sub');
  fs.mkdirSync(sub);
  fs.chownSync(sub, OTHER, OTHER);
  const fake = await OtherUIDServer.start(path.join(base, 'theirs', 'agent.sock'));
  const ok = path.join(base, 'ok');
  fs.mkdirSync(ok);
  const decoy = await ownServer(path.join(ok, 'agent.sock'));
  const link = path.join(ok, 'link');
  fs.symlinkSync(sub, link);
  try {
    // Our own link: refused for the uid found where ".." leads.
    let err = await refused(`${ok}/link/../agent.sock`);
    assert.match(err.message, new RegExp(`uid ${OTHER}`));
    // Their link: refused, naming it.
    fs.lchownSync(link, OTHER, OTHER);
    err = await refused(`${ok}/link/../agent.sock`);
    assert.ok(err.message.includes(link), err.message);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepStrictEqual(fake.seen, { conns: 0, bytes: 0 });
    assert.deepStrictEqual(decoy.seen, { conns: 0, bytes: 0 });
  } finally {
    await fake.stop();
    await decoy.close();
    fs.rmSync(ok, { recursive: true, force: true });
    fs.rmSync(sub, { recursive: true, force: true });
  }
});

test('a symlink of our own to the agent, and the real agent, are accepted', opts, async () => {
  const link = path.join(base, 'own-link.sock');
  fs.symlinkSync(proc.socket, link);
  const a = new hmacAgent.Agent({ path: link });
  await a.importKey('trust-own', Buffer.from('k'));
  assert.strictEqual((await a.mac('trust-own', 'sha256', 'x')).length, 32);
  a.close();
});

test('HMAC_AGENT_UID and the agentUid option accept the uid they name, by number or user name', opts, async () => {
  const sock = path.join(base, 'theirs', 'agent.sock');
  const fake = await OtherUIDServer.start(sock);
  const old = process.env.HMAC_AGENT_UID;
  try {
    let conns = 0;
    for (const [env, option] of [
      [String(OTHER), undefined],
      ['nobody', undefined],
      [undefined, OTHER],
      [undefined, 'nobody'],
      ['1', 'nobody'],
    ]) {
      if (env === undefined) delete process.env.HMAC_AGENT_UID;
      else process.env.HMAC_AGENT_UID = env;
      const a = new hmacAgent.Agent({ path: sock, agentUid: option });
      assert.deepStrictEqual(await a.mac('webhook', 'sha256', 'x'), Buffer.alloc(32), `env ${env} option ${option}`);
      a.close();
      conns++;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.strictEqual(fake.seen.conns, conns);
    assert.ok(fake.seen.bytes > 0, 'the accepted server got the requests');
    process.env.HMAC_AGENT_UID = 'no-such-user-here';
    await assert.rejects(new hmacAgent.Agent({ path: sock }).mac('k', 'sha256', 'x'), hmacAgent.InvalidArgument);
    delete process.env.HMAC_AGENT_UID;
    await assert.rejects(
      new hmacAgent.Agent({ path: sock, agentUid: 'bad name!' }).mac('k', 'sha256', 'x'),
      hmacAgent.InvalidArgument,
    );
    assert.strictEqual(fake.seen.conns, conns, 'nothing reached the server after');
  } finally {
    if (old === undefined) delete process.env.HMAC_AGENT_UID;
    else process.env.HMAC_AGENT_UID = old;
    await fake.stop();
  }
});

test('a client that reconnects checks again', opts, async () => {
  const sock = path.join(base, 'theirs', 'agent.sock');
  let fake = await OtherUIDServer.start(sock);
  const old = process.env.HMAC_AGENT_UID;
  try {
    process.env.HMAC_AGENT_UID = String(OTHER);
    const a = new hmacAgent.Agent({ path: sock });
    await a.mac('webhook', 'sha256', 'x');
    await fake.stop(); // the connection drops
    fake = await OtherUIDServer.start(sock);
    delete process.env.HMAC_AGENT_UID; // the uid is no longer accepted
    const err = await a.mac('webhook', 'sha256', 'x').catch((e) => e);
    assert.ok(err instanceof hmacAgent.UntrustedAgent, String(err));
    assert.deepStrictEqual(fake.seen, { conns: 0, bytes: 0 });
    a.close();
  } finally {
    if (old === undefined) delete process.env.HMAC_AGENT_UID;
    else process.env.HMAC_AGENT_UID = old;
    await fake.stop();
  }
});

test('a client running as another uid accepts an agent of its own uid', opts, async () => {
  const sock = path.join(base, 'theirs', 'agent.sock');
  const fake = await OtherUIDServer.start(sock);
  try {
    const script = `require(${JSON.stringify(PKG)}).mac('k', 'sha256', 'x').then((t) => console.log(t.length), (e) => { console.log(e.name); process.exitCode = 1; })`;
    const r = spawnSync(
      'setpriv',
      [`--reuid=${OTHER}`, `--regid=${OTHER}`, '--clear-groups', process.execPath, '-e', script],
      {
        env: { ...process.env, HMAC_AGENT_SOCK: sock, HMAC_AGENT_UID: '' },
        encoding: 'utf8',
        timeout: 20000,
      },
    );
    assert.strictEqual(r.stdout.trim(), '32', r.stderr);
  } finally {
    await fake.stop();
  }
});
