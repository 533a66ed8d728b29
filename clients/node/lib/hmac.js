'use strict';
// Hmac: an HMAC computation in the agent, shaped like the object
// crypto.createHmac returns, and a Writable stream.

const { Writable } = require('stream');
const wire = require('./wire');
const { MSG } = wire;
const { expect, expectTag, expectVerified } = require('./connection');
const { AlreadyFinalized, ConnectionLost, ContextLost, InvalidSignature } = require('./errors');
const { algorithmName, keyNameBytes, toBytes, toTag } = require('./agent');

// Tags longer than this are refused without sending them: no algorithm's
// tag comes near, and a frame must stay under the agent's max_frame.
const MAX_SIGNATURE = 1024;

// A context dropped without digest, verify or destroy is closed in the
// agent when it is garbage-collected, instead of living until the agent's
// idle timeout. The held value must not refer to the Hmac itself.
const abandoned = new FinalizationRegistry(({ conn, context }) => {
  conn.send(wire.close(conn.sendID(), context));
});

function noop() {}

function asContextLost(err) {
  return err instanceof ConnectionLost ? new ContextLost(`the context was lost: ${err.message}`) : err;
}

/**
 * An HMAC on a key held by the agent. update() streams to the agent
 * without waiting for it; digest(), verify() and copy() return Promises.
 * Requests made before the connection is up are queued in order and sent
 * when it is.
 *
 * An Hmac is not meant for use from several async flows at once beyond
 * what its methods' order implies; any number of Hmacs may share an Agent.
 */
class Hmac extends Writable {
  constructor(agent, algorithm, key, options = {}, copyOf = null) {
    const { agent: _ignored, ...streamOptions } = options || {};
    super(streamOptions);
    this._algorithm = algorithmName(algorithm);
    this._alg = wire.ALGORITHMS[this._algorithm];
    this._key = key;
    this._keyName = keyNameBytes(key);
    this._agent = agent;
    this._conn = null;
    this._context = 0;
    this._done = false;
    this._keyVersion = null;
    this._queue = [];
    this._startError = null;
    this._inWrite = 0; // bytes of the stream chunk passed to update, awaiting its callback
    this._streamTailOpen = false; // digest/verify is waiting for buffered stream chunks
    this._idleWaiters = [];
    let settle;
    // Resolves when the context is open in the agent; rejects with why not.
    this._opened = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    this._opened.catch(noop);
    this._settleOpen = settle;
    if (copyOf) return; // bound by copy()
    const conn = agent._current();
    if (conn) {
      this._start(conn);
    } else {
      agent._connection().then(
        (c) => this._start(c),
        (err) => this._startFailed(err),
      );
    }
  }

  /** The agent's name for the algorithm ("sha256", "sha3_256", ...). */
  get algorithm() {
    return this._algorithm;
  }

  /** The tag length in bytes. */
  get digestSize() {
    return this._alg.size;
  }

  /**
   * The version of the key that made the tag digest() resolved with, or
   * that matched the signature verify() accepted; null before then, and
   * from an agent of protocol version 1, which does not say. A context
   * keeps the version it was opened with (the key's current one, or N for
   * "NAME@N"), through copy() too, whatever rotations happen meanwhile.
   */
  get keyVersion() {
    return this._keyVersion;
  }

  _start(conn) {
    if (conn.broken) return this._startFailed(new ConnectionLost(`connection to the agent at ${conn.path} lost`));
    this._conn = conn;
    this._context = conn.nextContext();
    const context = this._context;
    conn
      .request((id) => wire.open(id, context, this._alg.code, this._keyName))
      .then((reply) => expect(reply, MSG.OK))
      .then(this._settleOpen.resolve, (err) => this._settleOpen.reject(asContextLost(err)));
    this._watch();
    this._drainQueue();
  }

  _bindCopy(conn, context) {
    this._conn = conn;
    this._context = context;
    this._settleOpen.resolve();
    this._watch();
  }

  _watch() {
    if (!this._done) abandoned.register(this, { conn: this._conn, context: this._context }, this);
  }

  _startFailed(err) {
    this._startError = err;
    this._settleOpen.reject(err);
    const queue = this._queue;
    this._queue = [];
    for (const q of queue) if (q.reject) q.reject(err);
  }

  _drainQueue() {
    const queue = this._queue;
    this._queue = [];
    for (const q of queue) {
      const result = q.fn(this._conn);
      if (q.resolve) Promise.resolve(result).then(q.resolve, q.reject);
    }
  }

  /** Runs fn(conn) now if connected, else when connected, keeping order;
   * fn returns a Promise when resolve is wanted. */
  _call(fn) {
    if (this._conn) return fn(this._conn);
    if (this._startError) return Promise.reject(this._startError);
    return new Promise((resolve, reject) => this._queue.push({ fn, resolve, reject }));
  }

  _sendUpdate(conn, bytes) {
    const chunk = conn.maxFrame - 9;
    for (let off = 0; off < bytes.length; off += chunk) {
      const part = bytes.subarray(off, Math.min(off + chunk, bytes.length));
      conn.send(wire.update(conn.sendID(), this._context, part));
    }
  }

  /**
   * Appends data (a string in inputEncoding, default utf8, or a Buffer,
   * TypedArray or DataView) and returns this at once. The bytes are
   * copied, so the caller may reuse its buffer. Throws AlreadyFinalized
   * after digest() or verify(); an error in the agent sticks to the
   * context and is reported by the next copy(), digest() or verify().
   */
  update(data, inputEncoding) {
    if (this._done) throw new AlreadyFinalized();
    return this._append(toBytes(data, inputEncoding, 'data'));
  }

  _append(bytes) {
    if (bytes.length === 0) return this;
    if (this._conn) {
      this._sendUpdate(this._conn, bytes);
    } else if (!this._startError) {
      const copy = Buffer.from(bytes);
      this._queue.push({ fn: (conn) => this._sendUpdate(conn, copy) });
    }
    return this;
  }

  /** Sends a request that ends or copies the context, and resolves with
   * its reply once the context is known to have opened. */
  async _roundTrip(make) {
    const reply = this._call(make);
    reply.catch(noop);
    await this._opened; // KeyNotFound and the like come first
    try {
      return await reply;
    } catch (err) {
      throw asContextLost(err);
    }
  }

  _finish() {
    this._done = true;
    abandoned.unregister(this);
  }

  /**
   * Finishes the context and resolves with the full-length tag: a Buffer,
   * or a string in the given encoding. Rejects with AlreadyFinalized if the
   * context was finished already.
   */
  digest(encoding) {
    if (this._done) return Promise.reject(new AlreadyFinalized());
    this._finish();
    const p = this._afterStream(() =>
      this._roundTrip((conn) => conn.request((id) => wire.finalize(id, this._context))),
    );
    return p.then((reply) => {
      const { tag, version } = expectTag(reply, this._alg.size);
      this._keyVersion = version;
      return encoding && encoding !== 'buffer' ? tag.toString(encoding) : tag;
    });
  }

  /**
   * Finishes the context and checks signature against the tag in the
   * agent, in constant time; rejects with InvalidSignature if it does not
   * match (a signature of any other length than the tag included). A
   * string signature needs its encoding ("hex", "base64", ...). Once it
   * resolves, keyVersion is the key version whose tag matched.
   */
  verify(signature, encoding) {
    let sig;
    try {
      if (this._done) throw new AlreadyFinalized();
      sig = toTag(signature, encoding, 'signature');
    } catch (err) {
      return Promise.reject(err);
    }
    this._finish();
    if (sig.length > MAX_SIGNATURE) {
      return this._afterStream(() => {
        this._call((conn) => conn.send(wire.close(conn.sendID(), this._context)));
        return this._opened.then(() => {
          throw new InvalidSignature();
        });
      });
    }
    const p = this._afterStream(() =>
      this._roundTrip((conn) => conn.request((id) => wire.verify(id, this._context, sig))),
    );
    return p.then((reply) => {
      this._keyVersion = expectVerified(reply);
    });
  }

  /**
   * Resolves with an independent Hmac holding the same state as this one
   * now; updates made after copy() returns do not reach the copy. Rejects
   * with AlreadyFinalized after digest() or verify(); a failed copy leaves
   * this Hmac as it was.
   */
  copy() {
    if (this._done) return Promise.reject(new AlreadyFinalized());
    const twin = new Hmac(this._agent, this._algorithm, this._key, {}, this);
    let target;
    const p = this._afterStream(() =>
      this._roundTrip((conn) => {
        target = conn.nextContext();
        return conn.request((id) => wire.copy(id, this._context, target));
      }),
    );
    return p.then((reply) => {
      expect(reply, MSG.OK);
      twin._bindCopy(this._conn, target);
      return twin;
    });
  }

  // Stream chunks written before digest(), verify() or copy() was called
  // belong to the message even if the stream still holds them: those
  // calls wait until every such chunk has gone to the agent.
  _afterStream(fn) {
    if (this._unwritten() === 0) return fn();
    this._streamTailOpen = true;
    return new Promise((resolve) => this._idleWaiters.push(resolve)).then(() => {
      this._streamTailOpen = false;
      return fn();
    });
  }

  /** Bytes written to the stream and not yet passed to the agent. */
  _unwritten() {
    return this.writableLength - this._inWrite;
  }

  _checkIdle() {
    if (this._idleWaiters.length === 0 || this._unwritten() !== 0) return;
    const waiters = this._idleWaiters;
    this._idleWaiters = [];
    for (const w of waiters) w();
  }

  // Writable: each chunk is an update; the stream waits while the socket
  // has more queued than it wants, so a piped file streams at the pace
  // the agent reads.
  _write(chunk, encoding, callback) {
    let bytes;
    try {
      if (this._done && !this._streamTailOpen) throw new AlreadyFinalized();
      bytes = toBytes(chunk, encoding === 'buffer' ? undefined : encoding, 'data');
    } catch (err) {
      return callback(err);
    }
    this._append(bytes);
    this._inWrite = bytes.length;
    const done = () => {
      this._inWrite = 0;
      callback();
      process.nextTick(() => this._checkIdle());
    };
    if (!this._conn) {
      this._opened.then(done, done);
    } else if (this._conn.needsDrain) {
      this._conn.drained().then(done);
    } else {
      done();
    }
  }

  // A stream that finished is destroyed by autoDestroy before digest() is
  // called on it: only one destroyed early, or by an error, drops its
  // context at once (the rest are closed when collected).
  _destroy(err, callback) {
    if (!this._done && (err || !this.writableFinished)) {
      this._finish();
      const context = this._context;
      if (this._conn) {
        this._conn.send(wire.close(this._conn.sendID(), context));
      } else {
        this._queue.push({ fn: (conn) => conn.send(wire.close(conn.sendID(), this._context)) });
      }
    }
    callback(err);
  }
}

module.exports = { Hmac };
