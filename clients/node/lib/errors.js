'use strict';
// Error classes. Every error the agent reports is an instance of the class
// for its protocol code (docs/protocol.md), with `code` set to the
// protocol's name for it ('invalid_signature', ...) and `wireCode` to its
// number. Errors of the connection itself (AgentNotRunning,
// ConnectionLost, UntrustedAgent, RequestTimeout) have a `code` of their own and no
// `wireCode`. All are subclasses of AgentError.

const { ERROR_CODES } = require('./wire');

class AgentError extends Error {
  constructor(message, code, wireCode) {
    super(message);
    this.name = this.constructor.name;
    this.code = code || 'internal';
    if (wireCode !== undefined) this.wireCode = wireCode;
  }
}

function define(name, code, wireCode, doc) {
  // A named class per protocol error, so `instanceof` and `err.name` work.
  const cls = {
    [name]: class extends AgentError {
      constructor(message = doc, c = code, w = wireCode) {
        super(message, c, w);
      }
    },
  }[name];
  return cls;
}

const AlreadyFinalized = define('AlreadyFinalized', 'already_finalized', 1, 'Context was already finalized.');
const InvalidSignature = define('InvalidSignature', 'invalid_signature', 2, 'Signature did not match digest.');
const UnsupportedAlgorithm = define('UnsupportedAlgorithm', 'unsupported_algorithm', 3, 'unsupported algorithm');
const KeyNotFound = define('KeyNotFound', 'key_not_found', 4, 'key not found');
const PermissionDenied = define('PermissionDenied', 'permission_denied', 5, 'permission denied');
const KeyExists = define('KeyExists', 'key_exists', 6, 'key exists');
const InvalidArgument = define('InvalidArgument', 'invalid_argument', 7, 'invalid argument');
const NotSupported = define('NotSupported', 'not_supported', 8, 'not supported');
const LimitReached = define('LimitReached', 'limit', 9, 'a limit was reached');
const Unavailable = define('Unavailable', 'unavailable', 10, 'the provider cannot serve now');
const ContextLost = define('ContextLost', 'context_lost', 11, "the context's state was lost");
const UnknownContext = define('UnknownContext', 'unknown_context', 12, 'no such context');
const BadRequest = define('BadRequest', 'bad_request', 13, 'malformed request');
const UnknownMessage = define('UnknownMessage', 'unknown_message', 14, 'unknown message type');
const VersionMismatch = define('VersionMismatch', 'version', 15, 'no common protocol version');
const InternalError = define('InternalError', 'internal', 16, 'the agent failed');
const ShuttingDown = define('ShuttingDown', 'shutting_down', 17, 'the agent is stopping');
const Closed = define('Closed', 'closed', 18, 'the agent or provider was closed');

// Client-side errors, without a wire code.
const AgentNotRunning = define('AgentNotRunning', 'agent_not_running', undefined, 'no hmac-agent listening');
const ConnectionLost = define('ConnectionLost', 'connection_lost', undefined, 'connection to the agent lost');
const UntrustedAgent = define('UntrustedAgent', 'untrusted_agent', undefined, 'the agent could not be trusted');
const RequestTimeout = define('RequestTimeout', 'timeout', undefined, 'no reply from the agent in time');

const BY_CODE = {
  1: AlreadyFinalized,
  2: InvalidSignature,
  3: UnsupportedAlgorithm,
  4: KeyNotFound,
  5: PermissionDenied,
  6: KeyExists,
  7: InvalidArgument,
  8: NotSupported,
  9: LimitReached,
  10: Unavailable,
  11: ContextLost,
  12: UnknownContext,
  13: BadRequest,
  14: UnknownMessage,
  15: VersionMismatch,
  16: InternalError,
  17: ShuttingDown,
  18: Closed,
};

/** The error for an ERROR reply; an unknown code is treated as internal. */
function fromCode(wireCode, message) {
  const cls = BY_CODE[wireCode];
  if (!cls) return new InternalError(message || `agent error ${wireCode}`, 'internal', wireCode);
  return new cls(message || ERROR_CODES[wireCode]);
}

module.exports = {
  AgentError,
  AlreadyFinalized,
  InvalidSignature,
  UnsupportedAlgorithm,
  KeyNotFound,
  PermissionDenied,
  KeyExists,
  InvalidArgument,
  NotSupported,
  LimitReached,
  Unavailable,
  ContextLost,
  UnknownContext,
  BadRequest,
  UnknownMessage,
  VersionMismatch,
  InternalError,
  ShuttingDown,
  Closed,
  AgentNotRunning,
  ConnectionLost,
  UntrustedAgent,
  RequestTimeout,
  BY_CODE,
  fromCode,
};
