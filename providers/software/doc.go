// Package software is the provider that keeps HMAC keys in a keystore on
// disk and computes every algorithm of the contract on the CPU, with what
// it keeps of each key in locked memory.
//
// # Keystore
//
// A keystore is a directory, mode 0700, holding one file per key, mode 0600,
// both owned by the agent's user. [Open] refuses a directory or file that
// group or others may read or write, or that another user owns, naming the
// file and the reason, as ssh refuses a loose private key. A key file is
// written to an unnamed O_TMPFILE inode, synced and linked under its name,
// so a crash never leaves half a key or a temporary copy of one; it is
// read, formatted and parsed in locked memory.
//
// # Key material
//
// A key does not keep its bytes. For each algorithm it keeps the hash
// states after absorbing K⊕ipad and K⊕opad, in one locked, undumpable
// arena (internal/memlock) that is zeroed and unmapped when the key is
// deleted or the provider closed; contexts open on a deleted key then
// fail with ErrKeyNotFound. Any hash.Hash with a block size plugs in: a
// hash that can save its state (encoding.BinaryAppender and
// BinaryUnmarshaler) is restored from the arena, any other absorbs the
// padded blocks kept there. See docs/security.md for what the standard
// library's hash objects hold on the heap meanwhile.
//
// # Speed
//
// Keying HMAC costs about four times a short MAC, so each key keeps, per
// algorithm, a pool of keyed states that are restored rather than rebuilt.
// [MAC.Copy] clones the hash state (hash.Cloner, or for BLAKE2 and SM3 a
// marshalled copy); it never replays input.
//
// # Concurrency
//
// [Provider] and its keys are safe for concurrent use; a MAC context is not.
package software
