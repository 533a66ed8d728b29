'use strict';
// Which algorithms to test: those the agent's software provider lists for
// a software key. The eleven of docs/protocol.md must be there; the four
// added later (md5, blake2b, blake2s, sm3) are tested as soon as the
// agent lists them, and until then must be refused as UnsupportedAlgorithm.

const crypto = require('crypto');
const wire = require('../../lib/wire');

const LATER = ['md5', 'blake2b', 'blake2s', 'sm3'];

async function softwareAlgorithms(agent, keyName) {
  const listed = (await agent.keys()).find((k) => k.name === keyName);
  if (!listed) throw new Error(`key ${keyName} not listed`);
  if (listed.kind !== 'software') throw new Error(`key ${keyName} is in a ${listed.kind} provider`);
  const supported = listed.algorithms.filter((a) => Object.prototype.hasOwnProperty.call(wire.ALGORITHMS, a));
  const unknown = listed.algorithms.filter((a) => !Object.prototype.hasOwnProperty.call(wire.ALGORITHMS, a));
  if (unknown.length) throw new Error(`the agent lists algorithms the client lacks: ${unknown.join(', ')}`);
  const missing = Object.keys(wire.ALGORITHMS).filter((a) => !supported.includes(a) && !LATER.includes(a));
  if (missing.length) throw new Error(`the software provider lacks ${missing.join(', ')}`);
  return supported;
}

/** Whether this Node's crypto can compute the algorithm, to compare with. */
function nodeHas(alg) {
  return crypto.getHashes().includes(wire.ALGORITHMS[alg].node);
}

module.exports = { LATER, softwareAlgorithms, nodeHas };
