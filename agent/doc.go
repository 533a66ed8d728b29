// Package agent is the core of hmac-agent: it routes key names to
// providers, enforces each key's policy and the agent's limits, and keeps
// each connection's open contexts in a [Session].
//
// The agent knows providers only through the contract in package
// providers, and knows nothing of sockets: package socket turns frames into
// calls on a Session, and tests call a Session directly.
//
// # Contexts
//
// A Session's contexts are named by IDs the client chooses, so that a
// client can stream UPDATEs without waiting for replies. An error during
// Update sticks to its context and is returned by the next Copy, Finalize
// or Verify on it. Finalize, Verify and Abandon free the context; Close
// frees them all. A reload ([Agent.Reload]) that takes an operation away
// from a context's caller frees the context too, and its next request is
// denied.
//
// # Names
//
// An object that a [KeyConfig] names is reachable only through it, never
// by its own name under the default policy. A caller that may use no key
// of a name is denied before any provider is asked, in the same words
// whether the key exists or not; names found in no provider are
// remembered for a short while, so that guesses do not reach a device.
//
// # Key versions
//
// A key whose provider keeps versions (providers.Versioner) MACs with its
// current version and verifies against every live one; NAME@N is version
// N alone. The agent reads each key's versions again every
// Options.VersionRefresh, so that a rotation made through another agent
// sharing the provider is served here too, and on that pace it retires
// versions past their KeyConfig.VerifyGrace and rotates keys whose
// KeyConfig.RotateEvery has passed, measured by Options.Now. A context
// keeps the versions it opened with. See docs/keys.md.
//
// # Devices
//
// Every call into a provider that may wait (all but the operations of
// providers.Immediate keys) waits at most the provider's timeout
// (providers.Deadliner, else [DefaultTimeout]) and then fails with
// ErrUnavailable naming the provider. The call itself cannot be
// interrupted and goes on in the background, keeping its input and
// whatever it holds in the device until it returns; a context whose call
// passed the deadline is ended and answers ErrContextLost. [Agent.Status]
// never calls a provider: health is probed in the background.
//
// # Logs a caller cannot grow
//
// Denial and failure lines in the audit log, and warnings a caller's
// request causes in the agent's log, are limited per caller uid; the next
// line let through carries the count left out ([Agent.LogLinesLeftOut]
// counts them all). [Use.Registered] tells an observer whether a key name
// is in the registry or only the caller's choosing.
//
// # Sharing between callers
//
// Beside the limits per connection, [Limits] bound what one uid holds over
// all its sessions (contexts, and bytes through its providers.Budget,
// which [Session.Budget] returns) and what all uids hold together, so one
// caller at its limit gets ErrLimit while the others are served as before.
// One-shots waiting for a device wait by caller and are served in turn
// (at most the provider's providers.Parallel calls at once), so a flood
// from one caller costs another one turn per round. When sessions close,
// the agent returns the memory they left free to the system, at most
// every few seconds (internal/memreturn), so a burst does not stay
// resident; [Agent.BytesHeld] is what it holds for callers now.
//
// # Concurrency
//
// [Agent] is safe for concurrent use. A [Session] is safe for concurrent
// use on different contexts; calls on one context must not overlap and
// keep the order the client sent them in, which the socket server ensures.
package agent
