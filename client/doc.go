// Package client talks to a running hmac-agent over its Unix socket.
//
// [HMAC] has the API of pyca/cryptography's HMAC class: Update, Copy,
// Verify and Finalize, with the same errors ([ErrAlreadyFinalized],
// [ErrInvalidSignature], [ErrUnsupportedAlgorithm]); the key stays in the
// agent. [Client.MAC] and [Client.VerifyMAC] do a whole message in one
// round trip.
//
// # Key versions
//
// A key name may be NAME@N, version N of the key alone. A plain name
// computes tags with the key's current version and verifies a tag of any
// live version. [HMAC.KeyVersion], [Client.MACVersion] and
// [Client.VerifyMACVersion] say which version made or matched a tag;
// [Client.RotateKey] and [Client.RetireVersion] manage versions. The
// client speaks protocol versions 1 and 2, and learns versions only from
// an agent of version 2.
//
// # Connections
//
// [Dial] finds the socket in $HMAC_AGENT_SOCK, else at the agent's default
// path. One [Client] multiplexes any number of goroutines over one
// connection: requests carry IDs, so they are pipelined, and Update never
// waits for the agent (an error in an update is reported by the next
// Copy, Finalize or Verify on that context). If the connection breaks, the
// next call that starts afresh (New, MAC, VerifyMAC, key management)
// dials again; contexts that lived on the old connection report
// [ErrContextLost]. A New, MAC, VerifyMAC, Keys or Status whose
// connection the agent closed before answering it, as it closes an idle
// connection, is sent once more on a new one; key management is not, as
// it may have run, and reports [ErrConnectionLost].
//
// # Trusting the agent
//
// Whoever can create the socket path can pretend to be the agent, accept
// forged tags and collect imported keys. So on every connection, before
// sending anything, the client reads the listener's uid (SO_PEERCRED) and
// accepts only root (which includes systemd's socket activation), its
// own uid, the uid $HMAC_AGENT_UID names, or one given with
// [WithAgentUID]; anything else fails with [ErrUntrustedAgent].
//
// # Errors
//
// Errors are compared with errors.Is against the package's Err values,
// which keep their identity across the socket. [ErrUnavailable] means the
// key's provider cannot serve now: its device is gone, did not answer
// within the provider's timeout, or is restarting. The message names the
// provider, and a later call may succeed; keys in other providers are not
// held up meanwhile.
//
// # Concurrency
//
// A Client is safe for concurrent use. An HMAC, like a hash.Hash, is used
// by one goroutine at a time.
package client
