'use strict';
// Keys for the tests: each secret imported into the agent once, under a
// name derived from it.

const crypto = require('crypto');

function keyring(agent, prefix = 'node') {
  const names = new Map();
  return async function key(secret) {
    const name = `${prefix}-${crypto.createHash('sha256').update(secret).digest('hex').slice(0, 20)}`;
    if (!names.has(name)) {
      names.set(
        name,
        agent.importKey(name, secret).then(() => name),
      );
    }
    return names.get(name);
  };
}

/** The tag crypto.createHmac gives for the agent's algorithm name. */
function reference(wire, alg, secret, ...parts) {
  const h = crypto.createHmac(wire.ALGORITHMS[alg].node, secret);
  for (const p of parts) h.update(p);
  return h.digest();
}

module.exports = { keyring, reference };
