'use strict';
// The Node client's speed beside crypto.createHmac in the same process.
//
//   node clients/node/bench.js                  starts its own agent
//   node clients/node/bench.js --socket-from-env  uses $HMAC_AGENT_SOCK
//   node clients/node/bench.js --seconds 5        time per figure (default 2)
//
// Reports one-shot 64-byte MACs per second, one at a time and with many in
// flight, a context per message, and streaming MB/s in 64 KiB updates,
// each beside in-process crypto.createHmac with the same key.

const crypto = require('crypto');
const path = require('path');
const { Agent, createHmac } = require(path.join(__dirname, 'index.js'));

const args = process.argv.slice(2);
const seconds = Number(args[args.indexOf('--seconds') + 1]) || 2;
const IN_FLIGHT = 256;

async function rate(fn) {
  // One round untimed, then as many as fit in the time; fn returns how
  // many operations it did.
  await fn();
  let n = 0;
  const start = process.hrtime.bigint();
  const limit = BigInt(Math.round(seconds * 1e9));
  for (;;) {
    n += await fn();
    const elapsed = process.hrtime.bigint() - start;
    if (elapsed >= limit) return n / (Number(elapsed) / 1e9);
  }
}

async function main() {
  let proc = null;
  let agent;
  if (args.includes('--socket-from-env')) {
    agent = new Agent();
  } else {
    const { AgentProcess } = require('./test/support/agent');
    proc = new AgentProcess();
    await proc.start();
    agent = new Agent({ path: proc.socket });
  }
  const secret = crypto.randomBytes(32);
  const name = `node-bench-${process.pid}`;
  await agent.importKey(name, secret);
  const msg = crypto.randomBytes(64);
  const chunk = crypto.randomBytes(64 << 10);
  const rows = [];
  const row = (label, value, unit) => {
    rows.push([label, value, unit]);
    console.log(`${label.padEnd(52)} ${value.toFixed(1).padStart(12)} ${unit}`);
  };

  row(
    'oneshot_ops (agent.mac, 64 B, one at a time)',
    await rate(async () => (await agent.mac(name, 'sha256', msg), 1)),
    'ops/s',
  );
  row(
    `oneshot_ops (agent.mac, 64 B, ${IN_FLIGHT} in flight)`,
    await rate(async () => {
      // IN_FLIGHT callers, each sending its next request as soon as its
      // last is answered, so the connection never runs dry.
      const worker = async () => {
        for (let i = 0; i < 16; i++) await agent.mac(name, 'sha256', msg);
      };
      await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
      return IN_FLIGHT * 16;
    }),
    'ops/s',
  );
  row(
    'context_ops (createHmac, update, digest, 64 B)',
    await rate(async () => (await createHmac('sha256', name, { agent }).update(msg).digest(), 1)),
    'ops/s',
  );
  row(
    'stream_mbps (agent, 16 MiB in 64 KiB updates)',
    16 *
      (await rate(async () => {
        const h = createHmac('sha256', name, { agent });
        for (let i = 0; i < 256; i++) h.update(chunk);
        await h.digest();
        return 1;
      })),
    'MB/s',
  );
  row(
    'inprocess_ops (crypto.createHmac, 64 B)',
    await rate(async () => {
      for (let i = 0; i < 1000; i++) crypto.createHmac('sha256', secret).update(msg).digest();
      return 1000;
    }),
    'ops/s',
  );
  row(
    'inprocess_stream_mbps (crypto.createHmac, 16 MiB)',
    16 *
      (await rate(async () => {
        const h = crypto.createHmac('sha256', secret);
        for (let i = 0; i < 256; i++) h.update(chunk);
        h.digest();
        return 1;
      })),
    'MB/s',
  );
  await agent.deleteKey(name).catch(() => {});
  agent.close();
  if (proc) await proc.cleanup();
  if (args.includes('--json')) {
    console.log(JSON.stringify(rows.map(([n, value, unit]) => ({ name: n, value, unit }))));
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
