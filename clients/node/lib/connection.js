'use strict';
// One connection to the agent: the handshake, request IDs, and replies
// matched to their requests by ID, in whatever order they come.
//
// The handshake offers protocol versions 1 and 2. Each reply carries the
// version its connection chose, since a tag or a verification is
// answered differently in each (TAG_VERSION and VERIFIED name the key
// version in version 2), and a request sent again after a reconnection
// may be answered by an agent that chose another.
//
// Writes made in one tick of the event loop go out in one write, so a
// burst of requests (or an OPEN, its UPDATEs and a FINALIZE) costs one
// system call, and the agent answers them with one too. The socket is
// unreferenced while no reply is awaited, so an idle connection does not
// keep the process alive.
//
// A request given up on for its timeout keeps its ID until the agent
// answers it, so that the late reply cannot be taken for another's.

const net = require('net');
const wire = require('./wire');
const { MSG } = wire;
const {
  AgentNotRunning,
  ConnectionLost,
  InternalError,
  RequestTimeout,
  UntrustedAgent,
  VersionMismatch,
  fromCode,
} = require('./errors');
const { acceptedUIDs, checkSocketPath } = require('./trust');

const BATCH_CONCAT = 64 * 1024; // batches up to this are joined into one buffer

class Connection {
  constructor(socketPath, requestTimeout = 0) {
    this.path = socketPath;
    this.requestTimeout = requestTimeout; // ms; 0 waits as long as the agent takes
    this.socket = null;
    this.broken = null; // the error that ended the connection
    this.maxFrame = 4096;
    this.maxContexts = 0;
    this.maxInFlight = 0;
    this.protocolVersion = 0; // chosen by the agent in the handshake
    this._pending = new Map(); // request ID -> {resolve, reject, timer, abandoned}
    this._waiting = 0; // pending requests not given up on: the socket is referenced while > 0
    this._nextID = 1;
    this._nextContext = 1;
    this._out = [];
    this._outBytes = 0;
    this._flushScheduled = false;
    this._decoder = new wire.FrameDecoder();
    this._drainWaiters = [];
    this._onWritten = (err) => {
      if (err) this._fail(err);
    };
  }

  /**
   * Checks the path, connects and shakes hands. Rejects with
   * UntrustedAgent (nothing was sent), AgentNotRunning, ConnectionLost or
   * the agent's error.
   */
  async connect({ timeout = 10000, agentUid } = {}) {
    const uids = await acceptedUIDs(agentUid);
    try {
      await checkSocketPath(this.path, uids);
    } catch (err) {
      if (err instanceof UntrustedAgent) throw err;
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') {
        throw new AgentNotRunning(`no hmac-agent listening at ${this.path} (agent not running): ${err.code}`);
      }
      throw new ConnectionLost(`cannot reach the agent at ${this.path}: ${err.message}`);
    }
    const socket = net.createConnection(this.path);
    this.socket = socket;
    let timer;
    const ready = new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
      timer = setTimeout(() => reject(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })), timeout);
    });
    try {
      await ready;
    } catch (err) {
      clearTimeout(timer);
      socket.destroy();
      this.broken = err;
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        throw new AgentNotRunning(`no hmac-agent listening at ${this.path} (agent not running): ${err.code}`);
      }
      throw new ConnectionLost(`cannot connect to the agent at ${this.path}: ${err.message}`);
    }
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this._onData(chunk));
    socket.on('error', (err) => this._fail(err));
    socket.on('close', () => this._fail(new Error('the agent closed the connection')));
    socket.on('drain', () => this._onDrain());
    let reply;
    try {
      const id = this._id();
      reply = await this._await(id, wire.hello(id), timeout, true);
    } catch (err) {
      this.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    if (reply.type === MSG.ERROR) {
      this.close();
      throw errorFromPayload(reply.payload);
    }
    const hello = reply.type === MSG.HELLO_REPLY ? wire.parseHelloReply(reply.payload) : null;
    if (!hello || hello.maxFrame < 4096) {
      this.close();
      throw new ConnectionLost(`bad handshake reply from the agent at ${this.path}`);
    }
    if (hello.version < wire.MIN_VERSION || hello.version > wire.VERSION) {
      this.close();
      throw new VersionMismatch(
        `the agent at ${this.path} chose protocol version ${hello.version}, outside the ${wire.MIN_VERSION}..${wire.VERSION} offered`,
      );
    }
    this.protocolVersion = hello.version;
    this.maxFrame = hello.maxFrame;
    this.maxContexts = hello.maxContexts;
    this.maxInFlight = hello.maxInFlight;
    return this;
  }

  /** A request ID not in use; never 0, which the agent uses for errors
   * not tied to a request. */
  _id() {
    for (;;) {
      const id = this._nextID;
      this._nextID = (this._nextID + 1) >>> 0 || 1;
      if (!this._pending.has(id)) return id;
    }
  }

  nextContext() {
    const c = this._nextContext;
    this._nextContext = (this._nextContext + 1) >>> 0 || 1;
    return c;
  }

  /**
   * Sends the request make(id) builds for a fresh request ID and resolves
   * with its reply {type, payload, protocolVersion}; rejects with
   * ConnectionLost if the connection ends first, or RequestTimeout after
   * requestTimeout ms.
   */
  request(make) {
    const id = this._id();
    return this._await(id, make(id), this.requestTimeout, false);
  }

  _await(id, frame, timeout, failConnection) {
    if (this.broken) return Promise.reject(lost(this.path, this.broken));
    return new Promise((resolve, reject) => {
      const call = { resolve, reject, timer: null, abandoned: false };
      if (timeout) {
        call.timer = setTimeout(() => {
          if (failConnection) return this._fail(new Error(`no reply within ${timeout} ms`));
          call.abandoned = true;
          this._settled();
          reject(new RequestTimeout(`no reply from the agent at ${this.path} within ${timeout} ms`));
        }, timeout);
      }
      this._pending.set(id, call);
      if (this._waiting++ === 0) this.socket.ref();
      this._write(frame);
    });
  }

  _settled() {
    if (--this._waiting === 0 && this.socket) this.socket.unref();
  }

  /** Sends a frame that has no reply (UPDATE, CLOSE). */
  send(frame) {
    if (this.broken) return false;
    this._write(frame);
    return true;
  }

  /** A request ID for a frame with no reply. */
  sendID() {
    return this._id();
  }

  /** True while the socket has more queued than it wants. */
  get needsDrain() {
    return !!(this.socket && this.socket.writableNeedDrain) || this._outBytes > 1 << 20;
  }

  /** Resolves when the queued writes have drained (or the connection ended). */
  drained() {
    if (!this.needsDrain || this.broken) return Promise.resolve();
    return new Promise((resolve) => this._drainWaiters.push(resolve));
  }

  _write(frame) {
    this._out.push(frame);
    this._outBytes += frame.length;
    if (!this._flushScheduled) {
      this._flushScheduled = true;
      process.nextTick(() => this._flush());
    }
  }

  _flush() {
    this._flushScheduled = false;
    const out = this._out;
    const bytes = this._outBytes;
    this._out = [];
    this._outBytes = 0;
    if (this.broken || out.length === 0) return;
    // A write that fails (the agent went away) fails every request
    // waiting on this connection, even if the socket reports nothing else.
    const onWritten = this._onWritten;
    if (out.length === 1) {
      this.socket.write(out[0], onWritten);
    } else if (bytes <= BATCH_CONCAT) {
      this.socket.write(Buffer.concat(out, bytes), onWritten);
    } else {
      this.socket.cork();
      for (let i = 0; i < out.length - 1; i++) this.socket.write(out[i]);
      this.socket.write(out[out.length - 1], onWritten);
      this.socket.uncork();
    }
    if (!this.socket.writableNeedDrain) this._onDrain();
  }

  _onDrain() {
    if (this.needsDrain) return;
    const waiters = this._drainWaiters;
    this._drainWaiters = [];
    for (const w of waiters) w();
  }

  _onData(chunk) {
    try {
      this._decoder.push(chunk, (type, id, payload) => {
        const call = this._pending.get(id);
        if (!call) return; // an error for an UPDATE or CLOSE, or for no request (ID 0)
        this._pending.delete(id);
        if (call.abandoned) return; // its caller gave up on it
        clearTimeout(call.timer);
        this._settled();
        call.resolve({ type, payload, protocolVersion: this.protocolVersion });
      });
    } catch (err) {
      this._fail(err);
    }
  }

  _fail(err) {
    if (this.broken) return;
    this.broken = err;
    const pending = this._pending;
    this._pending = new Map();
    this._waiting = 0;
    this._out = [];
    this._outBytes = 0;
    const e = lost(this.path, err);
    for (const call of pending.values()) {
      clearTimeout(call.timer);
      if (!call.abandoned) call.reject(e);
    }
    for (const w of this._drainWaiters) w();
    this._drainWaiters = [];
    if (this.socket) this.socket.destroy();
  }

  close() {
    this._fail(new Error('closed'));
  }
}

function lost(socketPath, cause) {
  return new ConnectionLost(`connection to the agent at ${socketPath} lost: ${cause.message}`);
}

function errorFromPayload(payload) {
  const e = wire.parseError(payload);
  if (!e) return new ConnectionLost('malformed error reply from the agent');
  return fromCode(e.code, e.message);
}

/** The reply's payload if it has the wanted type; else the error it carries. */
function expect(reply, want) {
  if (reply.type === want) return reply.payload;
  if (reply.type === MSG.ERROR) throw errorFromPayload(reply.payload);
  throw new ConnectionLost(`the agent replied 0x${reply.type.toString(16)}, expected 0x${want.toString(16)}`);
}

/**
 * The tag and key version of a reply to MAC or FINALIZE: in protocol
 * version 2 a TAG_VERSION naming the version that made the tag, in
 * version 1 a TAG naming none (version null). A reply of the other
 * version's type is a protocol error. The tag must be the algorithm's
 * full length.
 */
function expectTag(reply, size) {
  let tag;
  let version = null;
  if (reply.protocolVersion >= 2) {
    const parsed = wire.parseTagVersion(expect(reply, MSG.TAG_VERSION));
    if (!parsed) throw new InternalError('the agent sent a malformed TAG_VERSION reply');
    ({ tag, version } = parsed);
  } else {
    tag = expect(reply, MSG.TAG);
  }
  if (tag.length !== size)
    throw new InternalError(`the agent sent a ${tag.length}-byte tag where ${size} bytes belong`);
  return { tag, version };
}

/**
 * The key version a successful VERIFY or VERIFY_MAC matched: in protocol
 * version 2 the one VERIFIED names, in version 1 none (null) from an OK.
 * Anything else rejects, so that no malformed or unexpected reply is ever
 * taken for a valid signature.
 */
function expectVerified(reply) {
  if (reply.protocolVersion >= 2) {
    const version = wire.parseVerified(expect(reply, MSG.VERIFIED));
    if (version === null) throw new InternalError('the agent sent a malformed VERIFIED reply');
    return version;
  }
  expect(reply, MSG.OK);
  return null;
}

module.exports = { Connection, expect, expectTag, expectVerified, errorFromPayload };
