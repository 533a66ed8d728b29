'use strict';
// The hmac-agent wire protocol, versions 1 and 2 (docs/protocol.md):
// message types, algorithm and error codes, frame encoding, and decoders
// for the byte stream the agent sends. The decoders treat their input as
// untrusted: a bad length is an error, never a huge allocation or a crash.

// The protocol versions this client speaks; HELLO offers both and the
// agent chooses. Version 2 adds key versions: TAG_VERSION and VERIFIED
// name the key version that made or matched a tag.
const MIN_VERSION = 1;
const VERSION = 2;
const MAGIC = Buffer.from('HMAC', 'latin1');
const HEADER = 9; // length (4), type (1), request ID (4)

// Replies larger than this are refused: the largest the agent sends is a
// key list's JSON, far below it.
const MAX_REPLY = 1 << 24;

const MSG = Object.freeze({
  HELLO: 0x01,
  OPEN: 0x10,
  UPDATE: 0x11,
  COPY: 0x12,
  FINALIZE: 0x13,
  VERIFY: 0x14,
  CLOSE: 0x15,
  MAC: 0x20,
  VERIFY_MAC: 0x21,
  LIST_KEYS: 0x30,
  GENERATE_KEY: 0x31,
  IMPORT_KEY: 0x32,
  DELETE_KEY: 0x33,
  STATUS: 0x34,
  IMPORT_WRAPPED: 0x35,
  ROTATE_KEY: 0x36,
  RETIRE_VERSION: 0x37,
  OK: 0x80,
  HELLO_REPLY: 0x81,
  TAG: 0x82,
  DATA: 0x83,
  TAG_VERSION: 0x84,
  VERIFIED: 0x85,
  ERROR: 0x8f,
});

// The agent's algorithm names, wire codes and tag sizes, and the name
// Node's crypto module uses for the same hash (for crypto.createHmac).
const ALGORITHMS = Object.freeze({
  sha1: { code: 1, size: 20, node: 'sha1' },
  sha224: { code: 2, size: 28, node: 'sha224' },
  sha256: { code: 3, size: 32, node: 'sha256' },
  sha384: { code: 4, size: 48, node: 'sha384' },
  sha512: { code: 5, size: 64, node: 'sha512' },
  sha512_224: { code: 6, size: 28, node: 'sha512-224' },
  sha512_256: { code: 7, size: 32, node: 'sha512-256' },
  sha3_224: { code: 8, size: 28, node: 'sha3-224' },
  sha3_256: { code: 9, size: 32, node: 'sha3-256' },
  sha3_384: { code: 10, size: 48, node: 'sha3-384' },
  sha3_512: { code: 11, size: 64, node: 'sha3-512' },
  md5: { code: 12, size: 16, node: 'md5' },
  blake2b: { code: 13, size: 64, node: 'blake2b512' },
  blake2s: { code: 14, size: 32, node: 'blake2s256' },
  sm3: { code: 15, size: 32, node: 'sm3' },
});

// Protocol error names by wire code.
const ERROR_CODES = Object.freeze({
  1: 'already_finalized',
  2: 'invalid_signature',
  3: 'unsupported_algorithm',
  4: 'key_not_found',
  5: 'permission_denied',
  6: 'key_exists',
  7: 'invalid_argument',
  8: 'not_supported',
  9: 'limit',
  10: 'unavailable',
  11: 'context_lost',
  12: 'unknown_context',
  13: 'bad_request',
  14: 'unknown_message',
  15: 'version',
  16: 'internal',
  17: 'shutting_down',
  18: 'closed',
});

/** A whole frame: length, type, request ID, payload. */
function frame(type, requestID, payload) {
  const len = payload ? payload.length : 0;
  const b = Buffer.allocUnsafe(HEADER + len);
  b.writeUInt32BE(5 + len, 0);
  b[4] = type;
  b.writeUInt32BE(requestID >>> 0, 5);
  if (len) b.set(payload, HEADER);
  return b;
}

/** A byte string prefixed by its one-byte length. */
function short(bytes) {
  if (bytes.length > 255) throw new RangeError('field longer than 255 bytes');
  const b = Buffer.allocUnsafe(1 + bytes.length);
  b[0] = bytes.length;
  b.set(bytes, 1);
  return b;
}

function u32(n) {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function hello(requestID) {
  const p = Buffer.allocUnsafe(8);
  MAGIC.copy(p, 0);
  p.writeUInt16BE(MIN_VERSION, 4);
  p.writeUInt16BE(VERSION, 6);
  return frame(MSG.HELLO, requestID, p);
}

/**
 * An UPDATE frame carrying data (copied, so the caller may reuse its
 * buffer at once, as with crypto's Hmac.update).
 */
function update(requestID, context, data) {
  const b = Buffer.allocUnsafe(13 + data.length);
  b.writeUInt32BE(9 + data.length, 0);
  b[4] = MSG.UPDATE;
  b.writeUInt32BE(requestID >>> 0, 5);
  b.writeUInt32BE(context >>> 0, 9);
  b.set(data, 13);
  return b;
}

function open(requestID, context, algCode, keyName) {
  const p = Buffer.allocUnsafe(6 + keyName.length);
  p.writeUInt32BE(context >>> 0, 0);
  p[4] = algCode;
  p[5] = keyName.length;
  p.set(keyName, 6);
  return frame(MSG.OPEN, requestID, p);
}

function copy(requestID, context, newContext) {
  const p = Buffer.allocUnsafe(8);
  p.writeUInt32BE(context >>> 0, 0);
  p.writeUInt32BE(newContext >>> 0, 4);
  return frame(MSG.COPY, requestID, p);
}

function finalize(requestID, context) {
  return frame(MSG.FINALIZE, requestID, u32(context));
}

function verify(requestID, context, tag) {
  return frame(MSG.VERIFY, requestID, Buffer.concat([u32(context), tag]));
}

function close(requestID, context) {
  return frame(MSG.CLOSE, requestID, u32(context));
}

function importKey(requestID, provider, name, secret) {
  return frame(MSG.IMPORT_KEY, requestID, Buffer.concat([short(provider), short(name), secret]));
}

function deleteKey(requestID, provider, name) {
  return frame(MSG.DELETE_KEY, requestID, Buffer.concat([short(provider), short(name)]));
}

// ROTATE_KEY's flag: the data is the new version's bytes.
const ROTATE_IMPORT = 0x01;
// RETIRE_VERSION's flag: delete the version's object too.
const RETIRE_DESTROY = 0x01;

/**
 * ROTATE_KEY: a new version of the key, imported from secret when it is
 * given, else generated in the provider (length bytes, 0 for its default).
 */
function rotateKey(requestID, provider, name, length, secret) {
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32BE(length >>> 0, 0);
  head[4] = secret ? ROTATE_IMPORT : 0;
  const parts = [short(provider), short(name), head];
  if (secret) parts.push(secret);
  return frame(MSG.ROTATE_KEY, requestID, Buffer.concat(parts));
}

function retireVersion(requestID, provider, name, version, destroy) {
  const tail = Buffer.allocUnsafe(5);
  tail.writeUInt32BE(version >>> 0, 0);
  tail[4] = destroy ? RETIRE_DESTROY : 0;
  return frame(MSG.RETIRE_VERSION, requestID, Buffer.concat([short(provider), short(name), tail]));
}

/** MAC and VERIFY_MAC payloads: algorithm, key name[, tag], data. */
function oneShot(requestID, algCode, keyName, data, tag) {
  const tagLen = tag ? 1 + tag.length : 0;
  const p = Buffer.allocUnsafe(2 + keyName.length + tagLen + data.length);
  p[0] = algCode;
  p[1] = keyName.length;
  p.set(keyName, 2);
  let off = 2 + keyName.length;
  if (tag) {
    p[off] = tag.length;
    p.set(tag, off + 1);
    off += tagLen;
  }
  p.set(data, off);
  return frame(tag ? MSG.VERIFY_MAC : MSG.MAC, requestID, p);
}

/** The fields of a HELLO_REPLY payload, or null if it is malformed. */
function parseHelloReply(payload) {
  if (payload.length !== 14) return null;
  return {
    version: payload.readUInt16BE(0),
    maxFrame: payload.readUInt32BE(2),
    maxContexts: payload.readUInt32BE(6),
    maxInFlight: payload.readUInt32BE(10),
  };
}

/**
 * The key version and tag of a TAG_VERSION payload, or null if it is
 * malformed. Versions are numbered from 1: a 0 is malformed too.
 */
function parseTagVersion(payload) {
  if (payload.length < 4) return null;
  const version = payload.readUInt32BE(0);
  if (version === 0) return null;
  return { version, tag: payload.subarray(4) };
}

/** The key version of a VERIFIED payload, or null if it is malformed. */
function parseVerified(payload) {
  if (payload.length !== 4) return null;
  const version = payload.readUInt32BE(0);
  return version === 0 ? null : version;
}

/** The code and message of an ERROR payload, or null if it is malformed. */
function parseError(payload) {
  if (payload.length < 2) return null;
  return { code: payload.readUInt16BE(0), message: payload.toString('utf8', 2) };
}

/**
 * Splits the agent's byte stream into frames. push() takes each chunk as
 * it arrives and calls onFrame(type, requestID, payload) for every whole
 * frame in order; it throws a RangeError for a length outside 5..maxFrame,
 * after which the stream is out of step and the decoder must be dropped.
 * Payloads are copies, independent of the chunks. Not safe for use from
 * more than one stream.
 */
class FrameDecoder {
  constructor(maxFrame = MAX_REPLY) {
    this.maxFrame = maxFrame;
    this._chunks = [];
    this._buffered = 0;
    this._need = 0; // body length of the frame being gathered, 0 if unknown
  }

  push(chunk, onFrame) {
    if (this._buffered === 0) {
      // The common case: whole frames in one chunk, parsed in place.
      let off = 0;
      while (chunk.length - off >= 4) {
        const len = this._check(chunk.readUInt32BE(off));
        if (chunk.length - off - 4 < len) break;
        onFrame(chunk[off + 4], chunk.readUInt32BE(off + 5), Buffer.from(chunk.subarray(off + HEADER, off + 4 + len)));
        off += 4 + len;
      }
      if (off === chunk.length) return;
      chunk = chunk.subarray(off);
    }
    this._chunks.push(chunk);
    this._buffered += chunk.length;
    while (this._buffered >= 4) {
      if (this._need === 0) this._need = this._check(this._peek4());
      if (this._buffered < 4 + this._need) return;
      const all = this._chunks.length === 1 ? this._chunks[0] : Buffer.concat(this._chunks, this._buffered);
      const len = this._need;
      this._need = 0;
      onFrame(all[4], all.readUInt32BE(5), Buffer.from(all.subarray(HEADER, 4 + len)));
      const rest = all.subarray(4 + len);
      this._chunks = rest.length ? [rest] : [];
      this._buffered = rest.length;
    }
  }

  _peek4() {
    const first = this._chunks[0];
    if (first.length >= 4) return first.readUInt32BE(0);
    return Buffer.concat(this._chunks, this._buffered).readUInt32BE(0);
  }

  _check(len) {
    if (len < 5 || len > this.maxFrame) throw new RangeError(`bad frame length ${len} from the agent`);
    return len;
  }
}

module.exports = {
  MIN_VERSION,
  VERSION,
  MAGIC,
  HEADER,
  MAX_REPLY,
  MSG,
  ALGORITHMS,
  ERROR_CODES,
  frame,
  short,
  u32,
  hello,
  update,
  open,
  copy,
  finalize,
  verify,
  close,
  importKey,
  deleteKey,
  rotateKey,
  retireVersion,
  oneShot,
  parseHelloReply,
  parseTagVersion,
  parseVerified,
  parseError,
  FrameDecoder,
};
