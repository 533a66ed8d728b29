'use strict';
// Authenticating the agent before anything is sent to it.
//
// Node cannot read a Unix socket's peer credentials (SO_PEERCRED) without a
// native addon, so the check is on the path instead, as OpenSSH's
// StrictModes checks a user's files: the socket, and every directory and
// symlink met on the way to it from /, must be owned by an accepted uid
// (root, the client's own uid, or the one named by HMAC_AGENT_UID or the
// agentUid option), and no directory on the way may be writable by group
// or others unless it has the sticky bit (as /tmp does), where others may
// add entries but cannot rename or remove one they do not own.
//
// What that proves: only an accepted uid (or root) could have bound a
// socket at that path, and no one else can swap the socket or anything on
// the way to it between this check and connect(), since that needs write
// access to a directory on the way. What it does not prove: which process
// answers now. A process of an accepted uid may hand the listening socket
// to another process, and root may do anything; both are trusted anyway.

const fs = require('fs');
const path = require('path');
const { execFile } = require('child_process');
const { UntrustedAgent, InvalidArgument } = require('./errors');

const UID_ENV = 'HMAC_AGENT_UID';
const MAX_SYMLINKS = 40; // as the kernel's own limit

/** The uid for a uid or user name (string or number). */
async function resolveUID(spec, source) {
  if (typeof spec === 'number') {
    if (Number.isInteger(spec) && spec >= 0 && spec <= 0xffffffff) return spec;
  } else if (typeof spec === 'string') {
    const s = spec.trim();
    if (/^[0-9]+$/.test(s)) return Number(s);
    if (/^[A-Za-z0-9._][A-Za-z0-9._-]*\$?$/.test(s)) {
      const uid = await lookupUser(s);
      if (uid !== null) return uid;
      throw new InvalidArgument(`${source}: no user named "${s}"`);
    }
  }
  throw new InvalidArgument(`${source}: "${spec}" is neither a uid nor a user name`);
}

/** A user's uid from the system's user database (NSS, through getent),
 * or /etc/passwd where getent is missing; null if there is no such user. */
function lookupUser(name) {
  return new Promise((resolve) => {
    execFile('getent', ['passwd', name], { timeout: 5000 }, (err, stdout) => {
      if (!err) return resolve(uidFromPasswd(stdout, name));
      if (err.code === 2) return resolve(null); // getent: no such key
      fs.readFile('/etc/passwd', 'utf8', (err2, data) => resolve(err2 ? null : uidFromPasswd(data, name)));
    });
  });
}

function uidFromPasswd(text, name) {
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length >= 3 && f[0] === name && /^[0-9]+$/.test(f[2])) return Number(f[2]);
  }
  return null;
}

/**
 * The uids an agent may run as: root, the client's own uid, and the one
 * named by the agentUid option, else by $HMAC_AGENT_UID.
 */
async function acceptedUIDs(agentUid) {
  const uids = new Set([0, process.getuid()]);
  if (agentUid !== undefined && agentUid !== null && agentUid !== '') {
    uids.add(await resolveUID(agentUid, 'the agentUid option'));
  } else if (process.env[UID_ENV]) {
    uids.add(await resolveUID(process.env[UID_ENV], UID_ENV));
  }
  return uids;
}

function refuse(socketPath, what) {
  return new UntrustedAgent(`refusing the agent at ${socketPath}: ${what}`);
}

function describeUID(uids) {
  return [...uids].sort((a, b) => a - b).join(', ');
}

/**
 * Resolves when the socket at socketPath could only have been bound by an
 * accepted uid; rejects with UntrustedAgent naming the path, the offending
 * file and its owner otherwise. Missing files reject with the fs error
 * (ENOENT), which the caller reports as AgentNotRunning.
 */
async function checkSocketPath(socketPath, uids) {
  if (socketPath.startsWith('\0') || socketPath.startsWith('@')) {
    throw refuse(socketPath, 'an abstract socket has no owner to check');
  }
  const ok = (st) => uids.has(st.uid);
  // Components still to walk, and the directory reached so far (checked).
  // Not path.resolve: it drops "x/.." by name, where the kernel goes up
  // from wherever a symlink x leads, so the check would see another file
  // than connect() reaches.
  const absolute = path.isAbsolute(socketPath) ? socketPath : `${process.cwd()}/${socketPath}`;
  let pending = absolute.split('/').filter(Boolean);
  let dir = '/';
  let st = await fs.promises.lstat(dir);
  checkDir(socketPath, dir, st, ok, uids);
  let links = 0;
  while (pending.length) {
    const name = pending.shift();
    if (name === '.') continue;
    if (name === '..') {
      dir = path.dirname(dir);
      continue; // an ancestor: checked already on the way down
    }
    const p = path.join(dir, name);
    st = await fs.promises.lstat(p);
    if (!ok(st)) {
      const kind = st.isSymbolicLink()
        ? 'a symlink'
        : st.isDirectory()
          ? 'a directory'
          : st.isSocket()
            ? 'the socket'
            : 'a file';
      throw refuse(socketPath, `${kind} on the way, ${p}, is owned by uid ${st.uid}, not ${describeUID(uids)}`);
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_SYMLINKS) throw refuse(socketPath, 'too many symlinks on the way');
      const target = await fs.promises.readlink(p);
      pending = target.split('/').filter(Boolean).concat(pending);
      if (target.startsWith('/')) {
        dir = '/';
      }
      continue;
    }
    if (pending.length === 0) {
      if (!st.isSocket()) throw refuse(socketPath, `${p} is not a socket`);
      return;
    }
    checkDir(socketPath, p, st, ok, uids);
    dir = p;
  }
  throw refuse(socketPath, 'the path names no socket');
}

function checkDir(socketPath, p, st, ok, uids) {
  if (!st.isDirectory()) throw refuse(socketPath, `${p} is not a directory`);
  if (!ok(st)) throw refuse(socketPath, `the directory ${p} is owned by uid ${st.uid}, not ${describeUID(uids)}`);
  // Writable by others without the sticky bit: anyone in its group, or
  // anyone at all, could rename what follows and put their own in its place.
  if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
    const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
    throw refuse(socketPath, `the directory ${p} (mode ${mode}) is writable by others than its owner`);
  }
}

module.exports = { UID_ENV, acceptedUIDs, checkSocketPath, resolveUID };
