'use strict';
// The Agent: a connection to hmac-agent shared by any number of concurrent
// operations, reconnecting after the agent restarts.

const path = require('path');
const wire = require('./wire');
const { MSG } = wire;
const { Connection, expect, expectTag, expectVerified } = require('./connection');
const { ConnectionLost, InvalidArgument, KeyNotFound, UnsupportedAlgorithm } = require('./errors');

const SOCKET_ENV = 'HMAC_AGENT_SOCK';

/**
 * $HMAC_AGENT_SOCK, else $XDG_RUNTIME_DIR/hmac-agent/agent.sock, else
 * /tmp/hmac-agent-$UID/agent.sock: where the agent listens by default.
 */
function defaultSocketPath() {
  if (process.env[SOCKET_ENV]) return process.env[SOCKET_ENV];
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, 'hmac-agent', 'agent.sock');
  return `/tmp/hmac-agent-${process.getuid()}/agent.sock`;
}

// Node's hash names (and a few spellings) for the agent's.
const ALIASES = {
  'sha512-224': 'sha512_224',
  'sha512/224': 'sha512_224',
  'sha512-256': 'sha512_256',
  'sha512/256': 'sha512_256',
  'sha3-224': 'sha3_224',
  'sha3-256': 'sha3_256',
  'sha3-384': 'sha3_384',
  'sha3-512': 'sha3_512',
  blake2b512: 'blake2b',
  blake2s256: 'blake2s',
};

/** The agent's name for an algorithm given by its name or Node's. */
function algorithmName(algorithm) {
  if (typeof algorithm !== 'string') {
    throw new TypeError('algorithm must be a string such as "sha256"');
  }
  const lower = algorithm.toLowerCase();
  const name = ALIASES[lower] || lower;
  if (!Object.prototype.hasOwnProperty.call(wire.ALGORITHMS, name)) {
    throw new UnsupportedAlgorithm(`${algorithm} is not supported by hmac-agent`);
  }
  return name;
}

/** Bytes for data given as Node's Hmac.update takes it. */
function toBytes(data, encoding, what) {
  if (typeof data === 'string') return Buffer.from(data, encoding || 'utf8');
  if (Buffer.isBuffer(data)) return data;
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const err = new TypeError(`${what} must be a string, Buffer, TypedArray or DataView`);
  err.code = 'ERR_INVALID_ARG_TYPE';
  throw err;
}

/** A tag or signature: bytes, or a string in the given encoding. */
function toTag(tag, encoding, what) {
  if (typeof tag === 'string' && !encoding) {
    throw new TypeError(`${what} given as a string needs its encoding ("hex", "base64", ...)`);
  }
  return toBytes(tag, encoding, what);
}

/** A key's name as the protocol carries it. */
function keyNameBytes(key) {
  if (typeof key !== 'string') {
    if (Buffer.isBuffer(key) || ArrayBuffer.isView(key) || (key && typeof key === 'object')) {
      throw new TypeError('key must be the name of a key held by the agent (a string), not key bytes');
    }
    throw new TypeError('key must be a string, the name of a key held by the agent');
  }
  const b = Buffer.from(key, 'utf8');
  if (b.length > 255) throw new KeyNotFound(`key "${key}" not found`);
  return b;
}

// The largest key version or key length a request may carry: the Go
// client's bound, well inside the protocol's 4 bytes.
const MAX_COUNT = 2 ** 31;

/** A whole number in [min, MAX_COUNT], else InvalidArgument naming what it is. */
function count(n, min, what) {
  if (!Number.isInteger(n) || n < min || n > MAX_COUNT) throw new InvalidArgument(`no ${what} ${n}`);
  return n;
}

// Requests that can be sent again safely when the connection they went out
// on turns out to be dead: the agent computes the same answer twice.
const IDEMPOTENT = new Set([MSG.MAC, MSG.VERIFY_MAC, MSG.LIST_KEYS, MSG.STATUS]);

/**
 * A connection to hmac-agent, safe to share among any number of concurrent
 * operations: they are multiplexed over one socket by request ID.
 *
 * It connects on first use, after checking that only an accepted uid could
 * have bound the socket (see trust.js); if the agent restarts, the next
 * operation that starts afresh connects again, and contexts that lived on
 * the old connection fail with ContextLost.
 */
class Agent {
  constructor(options = {}) {
    if (typeof options === 'string') options = { path: options };
    this.path = options.path || defaultSocketPath();
    this.timeout = options.timeout === undefined ? 10000 : options.timeout;
    this.agentUid = options.agentUid;
    this.requestTimeout = options.requestTimeout || 0;
    this._conn = null;
    this._connecting = null;
    this._closed = false;
  }

  /** The live connection, or null if there is none yet. */
  _current() {
    const c = this._conn;
    return c && !c.broken && !this._closed ? c : null;
  }

  /** A live connection, connecting if needed; one attempt at a time. */
  _connection() {
    if (this._closed) return Promise.reject(new ConnectionLost('the Agent was closed'));
    const c = this._current();
    if (c) return Promise.resolve(c);
    if (!this._connecting) {
      const conn = new Connection(this.path, this.requestTimeout);
      this._connecting = conn.connect({ timeout: this.timeout, agentUid: this.agentUid }).then(
        () => {
          this._connecting = null;
          if (this._closed) {
            conn.close();
            throw new ConnectionLost('the Agent was closed');
          }
          this._conn = conn;
          return conn;
        },
        (err) => {
          this._connecting = null;
          throw err;
        },
      );
    }
    return this._connecting;
  }

  /** A request on a connection of its own choosing; idempotent ones are
   * sent again once if the connection was found dead. */
  async _request(type, make) {
    const conn = await this._connection();
    try {
      return await conn.request(make);
    } catch (err) {
      if (!(err instanceof ConnectionLost) || !IDEMPOTENT.has(type) || this._closed) throw err;
      const again = await this._connection();
      return again.request(make);
    }
  }

  /** The tag of data under the named key, in one round trip. The key's
   * current version makes it; "NAME@N" names version N alone. */
  async mac(key, algorithm, data, encoding) {
    return (await this.macVersioned(key, algorithm, data, encoding)).tag;
  }

  /** mac, resolving with {tag, version}: the key version that made the
   * tag, or null from an agent of protocol version 1, which does not say. */
  async macVersioned(key, algorithm, data, encoding) {
    const alg = wire.ALGORITHMS[algorithmName(algorithm)];
    const name = keyNameBytes(key);
    const bytes = toBytes(data, encoding, 'data');
    const conn = await this._connection();
    if (7 + name.length + bytes.length > conn.maxFrame) {
      // Too long for one frame: a context streams it.
      const h = this.createHmac(algorithm, key);
      h.update(bytes);
      const tag = await h.digest();
      return { tag, version: h.keyVersion };
    }
    const reply = await this._request(MSG.MAC, (id) => wire.oneShot(id, alg.code, name, bytes));
    return expectTag(reply, alg.size);
  }

  /** Checks tag over data in the agent, in constant time; rejects with
   * InvalidSignature if it does not match. A plain name accepts a tag of
   * any live version of the key, "NAME@N" only version N's. */
  async verifyMac(key, algorithm, data, tag, tagEncoding) {
    await this.verifyMacVersioned(key, algorithm, data, tag, tagEncoding);
  }

  /** verifyMac, resolving with the key version whose tag matched, or null
   * from an agent of protocol version 1, which does not say. */
  async verifyMacVersioned(key, algorithm, data, tag, tagEncoding) {
    const alg = wire.ALGORITHMS[algorithmName(algorithm)];
    const name = keyNameBytes(key);
    const bytes = toBytes(data, undefined, 'data');
    const sig = toTag(tag, tagEncoding, 'tag');
    const conn = await this._connection();
    if (8 + name.length + sig.length + bytes.length > conn.maxFrame || sig.length > 255) {
      const h = this.createHmac(algorithm, key);
      h.update(bytes);
      await h.verify(sig);
      return h.keyVersion;
    }
    const reply = await this._request(MSG.VERIFY_MAC, (id) => wire.oneShot(id, alg.code, name, bytes, sig));
    return expectVerified(reply);
  }

  /** An Hmac on the named key, as the package's createHmac with this agent. */
  createHmac(algorithm, key, options) {
    const { Hmac } = require('./hmac');
    return new Hmac(this, algorithm, key, options);
  }

  /** Stores secret as a new key in the agent (its owner and root only);
   * resolves with the key's description. */
  async importKey(name, secret, options = {}) {
    const provider = Buffer.from(options.provider || '', 'utf8');
    const bytes = toBytes(secret, undefined, 'secret');
    const reply = await this._request(MSG.IMPORT_KEY, (id) => wire.importKey(id, provider, keyNameBytes(name), bytes));
    return JSON.parse(expect(reply, MSG.DATA).toString('utf8'));
  }

  /** Deletes a key (the agent's owner and root only). */
  async deleteKey(name, options = {}) {
    const provider = Buffer.from(options.provider || '', 'utf8');
    const reply = await this._request(MSG.DELETE_KEY, (id) => wire.deleteKey(id, provider, keyNameBytes(name)));
    expect(reply, MSG.OK);
  }

  /**
   * Adds a version to a key and makes it current (the agent's owner and
   * root only): imported from options.secret when given, else generated
   * in the provider, options.length bytes (0 or absent: the provider's
   * default). Resolves with the new version, {version, state, created}.
   * Tags of the older versions go on verifying until they are retired or
   * pass the key's grace. Never sent twice: a rotation whose connection
   * died unanswered rejects with ConnectionLost, since it may have run.
   */
  async rotateKey(name, options = {}) {
    const provider = Buffer.from(options.provider || '', 'utf8');
    const length = count(options.length === undefined ? 0 : options.length, 0, 'key length');
    const secret = options.secret == null ? null : toBytes(options.secret, undefined, 'secret');
    const key = keyNameBytes(name);
    const reply = await this._request(MSG.ROTATE_KEY, (id) => wire.rotateKey(id, provider, key, length, secret));
    return JSON.parse(expect(reply, MSG.DATA).toString('utf8'));
  }

  /**
   * Stops a version of a key verifying, at once in this agent (the
   * agent's owner and root only); with options.destroy its object is
   * deleted from the provider too. Retiring the current version rejects
   * with InvalidArgument, a version that does not exist with KeyNotFound.
   */
  async retireVersion(name, version, options = {}) {
    const provider = Buffer.from(options.provider || '', 'utf8');
    const n = count(version, 1, 'key version');
    const key = keyNameBytes(name);
    const reply = await this._request(MSG.RETIRE_VERSION, (id) =>
      wire.retireVersion(id, provider, key, n, !!options.destroy),
    );
    expect(reply, MSG.OK);
  }

  /** The keys the caller may use, never their bytes. */
  async keys() {
    const reply = await this._request(MSG.LIST_KEYS, (id) => wire.frame(MSG.LIST_KEYS, id));
    return JSON.parse(expect(reply, MSG.DATA).toString('utf8'));
  }

  /** The agent's status. */
  async status() {
    const reply = await this._request(MSG.STATUS, (id) => wire.frame(MSG.STATUS, id));
    return JSON.parse(expect(reply, MSG.DATA).toString('utf8'));
  }

  /** Closes the connection; the agent frees its contexts. Every later
   * call rejects with ConnectionLost. */
  close() {
    this._closed = true;
    if (this._conn) this._conn.close();
    this._conn = null;
  }
}

let shared = null;

/** The process-wide Agent that createHmac uses when given none; it reads
 * $HMAC_AGENT_SOCK (and $HMAC_AGENT_UID) when first used. */
function defaultAgent() {
  if (!shared || shared._closed) shared = new Agent();
  return shared;
}

module.exports = {
  Agent,
  SOCKET_ENV,
  defaultAgent,
  defaultSocketPath,
  algorithmName,
  keyNameBytes,
  toBytes,
  toTag,
};
