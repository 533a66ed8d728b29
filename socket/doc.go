// Package socket serves the agent over a Unix socket with the protocol of
// package wire (docs/protocol.md).
//
// # Connections
//
// Each connection has one reader goroutine that decodes frames and runs
// requests, and one buffered writer shared by everything that replies. The
// writer is flushed when the reader has no more input buffered, so a
// pipelining client gets many replies per write and a ping-pong client
// gets each at once.
//
// Requests on keys whose provider never waits (the software provider) run
// inline in the reader: a goroutine per request would cost more than the
// HMAC. So do malformed and unknown requests. Anything that may reach a
// device runs elsewhere, however fast the device has been, because a
// device can stop answering mid-call: each context has a queue that keeps
// its requests in order, one-shots run on their own, a connection's
// management requests run one at a time on a queue of their own, and
// replies come back as they finish, in any order, matched by request ID.
// The reader asks the agent one question per request at most
// ([Session.Immediate], which never calls a provider). A cap on requests
// in flight makes the reader stop reading when a client outruns its
// device.
//
// The work a reader does itself takes a turn at the agent's CPUs by
// caller (turns.go, fair.Gate) once more than one uid is connected, so
// that one caller's flood costs another caller a turn. So does the work
// of a context that opened on its queue, its key not found yet, and
// turned out to be on a key that never waits
// ([Session.ContextImmediate]): the requests already queued behind its
// OPEN take turns, and the queue goes once they have run, so that the
// context's later requests run on the reader.
//
// # The agent behind it
//
// A [Server] serves any [Agent] (*agent.Agent in the daemon, a small fake
// in this package's tests): a [Session] per connection, and key
// management and status for a peer. A frame too large for the reader's
// buffer is handed on as a frame.Buffer, not copied: the connection
// holds one reference while the request runs, and whoever keeps the data
// longer (a PKCS#11 context's copy log, a device call past its deadline)
// takes its own; the last release returns the memory to the pool.
//
// # Peers
//
// A connection's peer is read once, when its reader starts: credentials
// with SO_PEERCRED and, when the agent's configuration or audit log needs
// it ([agent.Agent.IdentityNeed]), the executable, cgroup, systemd unit
// and container of the peer's process, pinned by SO_PEERPIDFD (or, on
// older kernels, pidfd_open and a check that the process holds the
// connection) so that a reused pid cannot lend another process's
// identity. Where a policy names a digest, the executable is hashed too,
// within [Limits].HashTimeout, or the connection is refused: a read that
// never returns is left behind, bounded per uid and in all. [CheckIdentitySupport]
// says whether this system can judge such conditions. The parser of
// /proc/PID/cgroup is fuzzed.
//
// # The socket file
//
// [Listen] makes the agent's socket in a directory it holds open (see
// [Listener]): the directory is checked through that descriptor, changed
// through it, and the socket is removed through it at Close, so a link or
// a swapped directory cannot redirect any of that.
//
// # Concurrency
//
// [Server] and [Listener] are safe for concurrent use.
package socket
