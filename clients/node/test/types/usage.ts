// Compiled (never run) by `npm run typecheck`: the declarations accept the
// documented uses and reject key bytes where a key name belongs.
import * as fs from 'fs';
import { pipeline } from 'stream/promises';
import { Agent, createHmac, mac, verifyMac, InvalidSignature, AgentError, Hmac, VersionInfo } from '../..';

async function uses(body: Buffer, signature: string): Promise<void> {
  const h: Hmac = createHmac('sha256', 'webhook').update(body).update('text', 'utf8');
  const tag: Buffer = await h.digest();
  const hex: string = await createHmac('sha3-256', 'webhook').digest('hex');
  const raw: Buffer = await createHmac('sha256', 'webhook').digest('buffer');
  void raw;
  const copy: Hmac = await createHmac('sha512', 'webhook').copy();
  await copy.verify(signature, 'hex');
  await pipeline(fs.createReadStream('file'), createHmac('sha256', 'webhook'));
  const agent = new Agent({ path: '/run/hmac-agent/agent.sock', agentUid: 'hmac-agent' });
  await agent.verifyMac('webhook', 'sha256', body, tag);
  await verifyMac('webhook', 'sha256', body, signature, 'base64');
  const t: Buffer = await mac('webhook', 'sha256', new Uint8Array(4));
  try {
    await agent.createHmac('sha256', 'webhook').verify(t);
  } catch (err) {
    if (err instanceof InvalidSignature) {
      const e: AgentError = err;
      const code: string = e.code;
      void code;
    }
  }
  void hex;
  // Key versions: what made or matched a tag, and managing them.
  const { tag: vtag, version } = await agent.macVersioned('webhook@2', 'sha256', body);
  const matched: number | null = await agent.verifyMacVersioned('webhook', 'sha256', body, vtag);
  const matchedHex: number | null = await agent.verifyMacVersioned('webhook', 'sha256', body, signature, 'hex');
  void matchedHex;
  const kv: number | null = h.keyVersion;
  const next: VersionInfo = await agent.rotateKey('webhook', { length: 32 });
  await agent.rotateKey('webhook', { secret: Buffer.from('new') });
  await agent.retireVersion('webhook', next.version - 1, { destroy: true });
  const versions = (await agent.keys())[0].versions ?? [];
  void [version, matched, kv, versions.map((v) => v.state)];
  // Callers written before versions still compile.
  const done: Promise<void> = createHmac('sha256', 'webhook').verify(t);
  const doneToo: Promise<void> = agent.verifyMac('webhook', 'sha256', body, t);
  void [done, doneToo];
  // @ts-expect-error a version is a number
  await agent.retireVersion('webhook', '1');
  // @ts-expect-error key bytes are not a key name
  createHmac('sha256', Buffer.from('secret'));
  // @ts-expect-error a string signature needs its encoding
  await h.verify(signature);
}
void uses;
