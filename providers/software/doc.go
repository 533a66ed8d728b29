// Package software is the provider that keeps HMAC keys in a keystore on
// disk and computes every algorithm of the contract: crypto/hmac for MD5,
// SHA-1 and SHA-2, and its own RFC 2104 HMAC over marshalled hash states
// for SHA-3, BLAKE2b-512, BLAKE2s-256 and SM3, whose states crypto/hmac
// cannot clone.
//
// # Keystore
//
// A keystore is a directory, mode 0700, holding one file per key, mode 0600,
// both owned by the agent's user. [Open] refuses a directory or file that
// group or others may read or write, or that another user owns, naming the
// file and the reason, as ssh refuses a loose private key. Files are written
// to a temporary name, synced and renamed, so a crash never leaves half a key.
//
// # Speed
//
// Keying HMAC costs about four times a short MAC, so each key keeps, per
// algorithm, a pool of keyed states that are reset rather than rebuilt.
// Copy clones the hash state (hash.Cloner, or a marshalled copy); it never
// replays input.
//
// # Concurrency
//
// [Provider] and its keys are safe for concurrent use; a MAC context is not.
package software
