'use strict';
// The codec against docs/protocol.md (every hex example, the algorithm and
// error tables) and the frame decoder against hostile byte streams.

const test = require('node:test');
const assert = require('node:assert');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const wire = require('../lib/wire');
const errors = require('../lib/errors');
const { expectTag, expectVerified } = require('../lib/connection');
const { REPO } = require('./support/agent');

const { MSG } = wire;
const DOC = fs.readFileSync(path.join(REPO, 'docs', 'protocol.md'), 'utf8');

function decodeAll(bytes, splits) {
  const d = new wire.FrameDecoder();
  const frames = [];
  let error = null;
  try {
    let off = 0;
    for (const n of splits || [bytes.length]) {
      d.push(bytes.subarray(off, off + n), (type, id, payload) =>
        frames.push({ type, id, payload: payload.toString('hex') }),
      );
      off += n;
    }
    if (off < bytes.length)
      d.push(bytes.subarray(off), (type, id, payload) => frames.push({ type, id, payload: payload.toString('hex') }));
  } catch (err) {
    assert.ok(err instanceof RangeError, `decoder threw ${err}`);
    error = err.message;
  }
  return { frames, error };
}

// The replies of protocol version 2 the page shows, as the client reads
// them: their types, and what the client takes from each.
const replies = [];

/** The frame the client would build for a request decoded from a doc example. */
function reencode(type, id, p) {
  const short = (off) => p.subarray(off + 1, off + 1 + p[off]);
  switch (type) {
    case MSG.HELLO:
      // The client offers its own range, 1..2; the page also shows a
      // client of version 1 alone.
      if (p.readUInt16BE(4) !== wire.MIN_VERSION || p.readUInt16BE(6) !== wire.VERSION) return null;
      return wire.hello(id);
    case MSG.OPEN:
      return wire.open(id, p.readUInt32BE(0), p[4], short(5));
    case MSG.UPDATE:
      return wire.update(id, p.readUInt32BE(0), p.subarray(4));
    case MSG.MAC:
      return wire.oneShot(id, p[0], short(1), p.subarray(2 + p[1]));
    case MSG.VERIFY_MAC: {
      const key = short(1);
      const tag = short(2 + key.length);
      return wire.oneShot(id, p[0], key, p.subarray(3 + key.length + tag.length), tag);
    }
    case MSG.COPY:
      return wire.copy(id, p.readUInt32BE(0), p.readUInt32BE(4));
    case MSG.FINALIZE:
      return wire.finalize(id, p.readUInt32BE(0));
    case MSG.VERIFY:
      return wire.verify(id, p.readUInt32BE(0), p.subarray(4));
    case MSG.CLOSE:
      return wire.close(id, p.readUInt32BE(0));
    case MSG.LIST_KEYS:
    case MSG.STATUS:
      return wire.frame(type, id);
    case MSG.IMPORT_KEY: {
      const provider = short(0);
      const name = short(1 + provider.length);
      return wire.importKey(id, provider, name, p.subarray(2 + provider.length + name.length));
    }
    case MSG.DELETE_KEY: {
      const provider = short(0);
      return wire.deleteKey(id, provider, short(1 + provider.length));
    }
    case MSG.ROTATE_KEY: {
      const provider = short(0);
      const name = short(1 + provider.length);
      const off = 2 + provider.length + name.length;
      const secret = p[off + 4] & 1 ? p.subarray(off + 5) : null;
      return wire.rotateKey(id, provider, name, p.readUInt32BE(off), secret);
    }
    case MSG.RETIRE_VERSION: {
      const provider = short(0);
      const name = short(1 + provider.length);
      const off = 2 + provider.length + name.length;
      return wire.retireVersion(id, provider, name, p.readUInt32BE(off), p[off + 4] & 1);
    }
    case MSG.HELLO_REPLY: {
      const h = wire.parseHelloReply(p);
      assert.ok(h, 'HELLO_REPLY parses');
      assert.ok(h.version >= wire.MIN_VERSION && h.version <= wire.VERSION, `HELLO_REPLY version ${h.version}`);
      return null;
    }
    case MSG.TAG_VERSION:
      replies.push({ type, ...expectTag({ type, payload: p, protocolVersion: 2 }, p.length - 4) });
      return null;
    case MSG.VERIFIED:
      replies.push({ type, version: expectVerified({ type, payload: p, protocolVersion: 2 }) });
      return null;
    case MSG.ERROR: {
      const e = wire.parseError(p);
      assert.ok(e, 'ERROR parses');
      assert.strictEqual(errors.fromCode(e.code, e.message).wireCode, e.code);
      return null;
    }
    default:
      return null;
  }
}

test('every hex example in docs/protocol.md decodes, and requests the client builds re-encode byte for byte', () => {
  const blocks = DOC.split('```hex\n').slice(1);
  assert.ok(blocks.length >= 20, `only ${blocks.length} examples`);
  let reencoded = 0;
  for (const block of blocks) {
    const text = block.split('```')[0];
    const bytes = Buffer.from(text.replace(/\s+/g, ''), 'hex');
    const { frames, error } = decodeAll(bytes);
    assert.strictEqual(error, null, text);
    assert.strictEqual(frames.length, 1, text);
    const f = frames[0];
    const again = reencode(f.type, f.id, Buffer.from(f.payload, 'hex'));
    if (again) {
      assert.strictEqual(again.toString('hex'), bytes.toString('hex'), text);
      reencoded++;
    }
  }
  assert.ok(reencoded >= 18, `${reencoded} re-encoded`);
  // The page's TAG_VERSION names version 2 of a tag of 0xcd bytes, and
  // its VERIFIED version 1.
  assert.deepStrictEqual(replies, [
    { type: MSG.TAG_VERSION, tag: Buffer.alloc(32, 0xcd), version: 2 },
    { type: MSG.VERIFIED, version: 1 },
  ]);
});

test('HELLO offers protocol versions 1 to 2, as the page shows', () => {
  assert.strictEqual(wire.hello(1).toString('hex'), '0000000d0100000001484d414300010002');
  assert.strictEqual(docExample('A client of versions 1 and 2').toString('hex'), wire.hello(1).toString('hex'));
});

test('replies are read by the protocol version their connection chose', () => {
  const tag = Buffer.alloc(32, 0xcd);
  const withVersion = Buffer.concat([wire.u32(7), tag]);
  // Version 2: TAG_VERSION and VERIFIED, naming the key version.
  assert.deepStrictEqual(expectTag({ type: MSG.TAG_VERSION, payload: withVersion, protocolVersion: 2 }, 32), {
    tag,
    version: 7,
  });
  assert.strictEqual(expectVerified({ type: MSG.VERIFIED, payload: wire.u32(3), protocolVersion: 2 }), 3);
  // Version 1: TAG and OK, naming none.
  assert.deepStrictEqual(expectTag({ type: MSG.TAG, payload: tag, protocolVersion: 1 }, 32), { tag, version: null });
  assert.strictEqual(expectVerified({ type: MSG.OK, payload: Buffer.alloc(0), protocolVersion: 1 }), null);
  // The other version's reply, or a malformed one, is never a tag or a
  // valid signature.
  const refused = [
    [expectTag, { type: MSG.TAG, payload: tag, protocolVersion: 2 }, errors.ConnectionLost],
    [expectTag, { type: MSG.TAG_VERSION, payload: withVersion, protocolVersion: 1 }, errors.ConnectionLost],
    [expectTag, { type: MSG.TAG_VERSION, payload: Buffer.alloc(3), protocolVersion: 2 }, errors.InternalError],
    [
      expectTag,
      { type: MSG.TAG_VERSION, payload: Buffer.concat([wire.u32(0), tag]), protocolVersion: 2 },
      errors.InternalError,
    ],
    [
      expectTag,
      { type: MSG.TAG_VERSION, payload: Buffer.concat([wire.u32(1), tag.subarray(1)]), protocolVersion: 2 },
      errors.InternalError,
    ],
    [expectVerified, { type: MSG.OK, payload: Buffer.alloc(0), protocolVersion: 2 }, errors.ConnectionLost],
    [expectVerified, { type: MSG.VERIFIED, payload: wire.u32(1), protocolVersion: 1 }, errors.ConnectionLost],
    [expectVerified, { type: MSG.VERIFIED, payload: Buffer.alloc(0), protocolVersion: 2 }, errors.InternalError],
    [expectVerified, { type: MSG.VERIFIED, payload: Buffer.alloc(5, 1), protocolVersion: 2 }, errors.InternalError],
    [expectVerified, { type: MSG.VERIFIED, payload: wire.u32(0), protocolVersion: 2 }, errors.InternalError],
  ];
  for (const [fn, reply, cls] of refused) {
    assert.throws(
      () => fn(reply, 32),
      cls,
      `${fn.name} of 0x${reply.type.toString(16)} ${reply.payload.toString('hex')} on version ${reply.protocolVersion}`,
    );
  }
  // An ERROR is the error on either version.
  for (const protocolVersion of [1, 2]) {
    const payload = Buffer.concat([Buffer.from([0, 2]), Buffer.from('no')]);
    assert.throws(() => expectVerified({ type: MSG.ERROR, payload, protocolVersion }), errors.InvalidSignature);
  }
});

/** The bytes of the first hex example after the line starting with heading. */
function docExample(heading) {
  const start = DOC.indexOf(heading);
  assert.ok(start >= 0, heading);
  const block = DOC.slice(start).split('```hex\n')[1].split('```')[0];
  return Buffer.from(block.replace(/\s+/g, ''), 'hex');
}

function docTable(heading) {
  // The rows of the first table after a line starting with heading.
  const start = DOC.indexOf(heading);
  assert.ok(start >= 0, heading);
  const rows = [];
  let inTable = false;
  for (const line of DOC.slice(start).split('\n').slice(1)) {
    if (line.startsWith('|')) {
      inTable = true;
      const cells = line
        .split('|')
        .slice(1, -1)
        .map((c) => c.trim());
      if (/^[0-9]+$/.test(cells[0])) rows.push(cells);
    } else if (inTable) {
      break;
    }
  }
  return rows;
}

test("the algorithm table agrees with docs/protocol.md's", () => {
  const rows = docTable('Algorithms are one byte');
  assert.ok(rows.length >= 11);
  for (const [code, name, size] of rows) {
    const a = wire.ALGORITHMS[name];
    assert.ok(a, `the client lacks ${name}`);
    assert.strictEqual(a.code, Number(code), name);
    assert.strictEqual(a.size, Number(size), name);
  }
  // Every algorithm has a distinct code, and Node's name for it gives a
  // tag of the size the table says wherever this Node has the hash.
  const codes = new Set(Object.values(wire.ALGORITHMS).map((a) => a.code));
  assert.strictEqual(codes.size, Object.keys(wire.ALGORITHMS).length);
  for (const [name, a] of Object.entries(wire.ALGORITHMS)) {
    if (crypto.getHashes().includes(a.node)) {
      assert.strictEqual(crypto.createHmac(a.node, 'k').digest().length, a.size, name);
    }
  }
});

test("the error classes agree with docs/protocol.md's error table", () => {
  const rows = docTable('| code | name | meaning |'.slice(0, 8) + ' name | meaning |');
  assert.strictEqual(rows.length, 18);
  for (const [code, name] of rows) {
    const err = errors.fromCode(Number(code), 'm');
    assert.strictEqual(err.code, name, `code ${code}`);
    assert.strictEqual(err.wireCode, Number(code), name);
    assert.ok(err instanceof errors.AgentError);
    assert.strictEqual(wire.ERROR_CODES[code], name);
  }
  const unknown = errors.fromCode(999, 'new');
  assert.ok(unknown instanceof errors.InternalError, 'an unknown code is internal');
});

// The decoder gets the same frames, or the same error, however the stream
// is cut: the in-place path and the gathering path agree.
function checkSplits(bytes, rng) {
  const whole = decodeAll(bytes);
  const byteWise = decodeAll(bytes, Array(bytes.length).fill(1));
  assert.deepStrictEqual(byteWise, whole);
  for (let i = 0; i < 20; i++) {
    const splits = [];
    for (let left = bytes.length; left > 0;) {
      const n = Math.min(left, 1 + Math.floor(rng() * 40));
      splits.push(n);
      left -= n;
    }
    assert.deepStrictEqual(decodeAll(bytes, splits), whole);
  }
  return whole;
}

function prng(seed) {
  // xorshift32: reproducible runs.
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

test('the decoder corpus in testdata: same result at every split, errors only as RangeError', () => {
  const dir = path.join(__dirname, 'testdata', 'frames');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.hex'));
  assert.ok(files.length >= 5);
  const rng = prng(21);
  for (const f of files) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    const bytes = Buffer.from(text.replace(/#.*$/gm, '').replace(/\s+/g, ''), 'hex');
    const r = checkSplits(bytes, rng);
    if (/length|cap/.test(f)) assert.ok(r.error, `${f} must be refused`);
  }
});

test('random frames round-trip through the decoder at random splits', () => {
  const rng = prng(7);
  for (let round = 0; round < 200; round++) {
    const want = [];
    const parts = [];
    for (let n = Math.floor(rng() * 6); n > 0; n--) {
      const payload = crypto.randomBytes(Math.floor(rng() * (rng() < 0.1 ? 70000 : 100)));
      const type = Math.floor(rng() * 256);
      const id = Math.floor(rng() * 0x100000000);
      want.push({ type, id, payload: payload.toString('hex') });
      parts.push(wire.frame(type, id, payload));
    }
    const bytes = Buffer.concat(parts);
    const got = decodeAll(bytes, [Math.floor(rng() * (bytes.length + 1)), Math.floor(rng() * 100)]);
    assert.deepStrictEqual(got, { frames: want, error: null });
  }
});

test('random bytes never make the decoder allocate past its cap or throw anything but RangeError', () => {
  const rng = prng(99);
  for (let round = 0; round < 300; round++) {
    const bytes = crypto.randomBytes(Math.floor(rng() * 64));
    if (rng() < 0.5 && bytes.length >= 4) bytes.writeUInt32BE(Math.floor(rng() * 80), 0);
    checkSplits(bytes, rng);
  }
  // A length over the cap is refused as soon as it is read, before any body.
  const d = new wire.FrameDecoder();
  assert.throws(() => d.push(Buffer.from('01000001', 'hex'), () => {}), RangeError);
});
