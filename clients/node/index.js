'use strict';
/**
 * hmac-agent: HMAC with keys held by hmac-agent, in the shape of Node's
 * crypto.createHmac.
 *
 *   const { createHmac } = require('hmac-agent');
 *   const h = createHmac('sha256', 'webhook');   // a key name, not key bytes
 *   h.update(body);                               // streamed, never waits
 *   await h.verify(signature, 'hex');             // InvalidSignature if wrong
 *
 * One Agent (or the shared default, which reads $HMAC_AGENT_SOCK) is safe
 * for any number of concurrent operations: they share one connection.
 */

const wire = require('./lib/wire');
const errors = require('./lib/errors');
const { Agent, SOCKET_ENV, defaultAgent, defaultSocketPath } = require('./lib/agent');
const { Hmac } = require('./lib/hmac');
const { UID_ENV } = require('./lib/trust');

/**
 * An Hmac on the named key: createHmac(algorithm, keyName[, options]),
 * where options.agent is an Agent (default: the shared one) and the other
 * options go to the Writable stream.
 */
function createHmac(algorithm, keyName, options) {
  const agent = (options && options.agent) || defaultAgent();
  return new Hmac(agent, algorithm, keyName, options);
}

/** The tag of data under the named key from the shared Agent, in one round trip. */
function mac(keyName, algorithm, data, encoding) {
  return defaultAgent().mac(keyName, algorithm, data, encoding);
}

/** Checks tag over data with the shared Agent; rejects with InvalidSignature if it does not match. */
function verifyMac(keyName, algorithm, data, tag, tagEncoding) {
  return defaultAgent().verifyMac(keyName, algorithm, data, tag, tagEncoding);
}

/** The algorithm names the client knows, in wire-code order. */
function getAlgorithms() {
  return Object.keys(wire.ALGORITHMS);
}

module.exports = {
  createHmac,
  mac,
  verifyMac,
  getAlgorithms,
  Agent,
  Hmac,
  defaultAgent,
  defaultSocketPath,
  SOCKET_ENV,
  UID_ENV,
  ...Object.fromEntries(Object.entries(errors).filter(([k]) => k !== 'BY_CODE' && k !== 'fromCode')),
};
