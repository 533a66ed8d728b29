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

// Wire codes by the protocol's name, from wire.js's table.
const WIRE_CODES = Object.freeze(
  Object.fromEntries(Object.entries(ERROR_CODES).map(([wireCode, name]) => [name, Number(wireCode)])),
);

function define(name, code, doc) {
  const wireCode = WIRE_CODES[code];
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

const AlreadyFinalized = define('AlreadyFinalized', 'already_finalized', 'Context was already finalized.');
const InvalidSignature = define('InvalidSignature', 'invalid_signature', 'Signature did not match digest.');
const UnsupportedAlgorithm = define('UnsupportedAlgorithm', 'unsupported_algorithm', 'unsupported algorithm');
const KeyNotFound = define('KeyNotFound', 'key_not_found', 'key not found');
const PermissionDenied = define('PermissionDenied', 'permission_denied', 'permission denied');
const KeyExists = define('KeyExists', 'key_exists', 'key exists');
const InvalidArgument = define('InvalidArgument', 'invalid_argument', 'invalid argument');
const NotSupported = define('NotSupported', 'not_supported', 'not supported');
const LimitReached = define('LimitReached', 'limit', 'a limit was reached');
const Unavailable = define('Unavailable', 'unavailable', 'the provider cannot serve now');
const ContextLost = define('ContextLost', 'context_lost', "the context's state was lost");
const UnknownContext = define('UnknownContext', 'unknown_context', 'no such context');
const BadRequest = define('BadRequest', 'bad_request', 'malformed request');
const UnknownMessage = define('UnknownMessage', 'unknown_message', 'unknown message type');
const VersionMismatch = define('VersionMismatch', 'version', 'no common protocol version');
const InternalError = define('InternalError', 'internal', 'the agent failed');
const ShuttingDown = define('ShuttingDown', 'shutting_down', 'the agent is stopping');
const Closed = define('Closed', 'closed', 'the agent or provider was closed');

// Client-side errors, without a wire code.
const AgentNotRunning = define('AgentNotRunning', 'agent_not_running', 'no hmac-agent listening');
const ConnectionLost = define('ConnectionLost', 'connection_lost', 'connection to the agent lost');
const UntrustedAgent = define('UntrustedAgent', 'untrusted_agent', 'the agent could not be trusted');
const RequestTimeout = define('RequestTimeout', 'timeout', 'no reply from the agent in time');

// The protocol's errors by wire code; a code without a class of its own
// is treated as internal.
const BY_CODE = Object.freeze(
  Object.fromEntries(
    [
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
    ].map((cls) => [new cls().wireCode, cls]),
  ),
);

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
