// Package pkcs11 is the provider that keeps HMAC keys in a PKCS#11 token
// (an HSM; SoftHSM2 in tests), built on github.com/miekg/pkcs11.
//
// # Keys
//
// Keys are secret-key objects that never leave the token: generated inside
// it, imported with C_CreateObject, or unwrapped under an AES key already
// in it (C_UnwrapKey with CKM_AES_KEY_WRAP_PAD), always sensitive,
// non-extractable and private. Keys made by other tools are found by label
// or ID, named by RFC 7512 URIs ("pkcs11:token=agent;object=webhook").
// Tokens refuse HMAC keys shorter than the digest, so short imported keys
// are zero-padded to 64 bytes: HMAC pads keys with zeros to the block size
// itself, and every block size here is at least 64, so the tags do not
// change.
//
// # Versions
//
// [Provider] is a providers.Versioner, and keeps versions in the token so
// that every agent sharing it sees the same ones (versions.go): version 1
// is the object labelled with the key's name, as keys were made before
// versions existed; version N is an object labelled NAME@N; each version's
// creation, retirement and destruction are recorded in CKO_DATA objects
// beside it, only ever added, never changed. A rotation claims its number
// with a record before making the key object and commits it after, so two
// agents rotating one key at once never make two versions with one
// number. A rotation that fails leaves its number unused.
//
// # Sessions and concurrency
//
// A PKCS#11 session used by two goroutines at once corrupts the module's
// heap, so sessions live in a bounded pool and each is lent to one
// goroutine at a time. A context holds no session while its input is
// small: the input is buffered and signed with one C_Sign at the end. Only
// a context that streams past the buffer holds a session, until it
// finishes. Waiting for a session honours the caller's context and a
// configured timeout. Changes to the token's objects (create, delete,
// rotate, retire) run one at a time on each module: SoftHSM2's object
// store breaks an object being created when another thread searches.
// [Provider] and its keys are safe for concurrent use; a MAC context is
// not.
//
// # Caches
//
// A key's attributes, its object handle and, on SoftHSM2 by default, a
// session copy of it are kept between calls, in one objectCache
// (cache.go) with one way to drop what a change to an object concerns
// and one to drop every handle and copy. The token judges every
// operation on a handle itself; a copy is checked against its original
// at most every 200 ms, the longest a key deleted or restricted by
// another program keeps working (copies.go, docs/pkcs11.md).
//
// # Copy
//
// Most tokens, SoftHSM2 among them, cannot save an operation's state
// (C_GetOperationState), so Copy replays the input so far into a new
// operation. Each context keeps its input in a log shared with its copies,
// up to a configured cap (64 MiB by default); past it Copy fails with
// ErrLimit and the context itself goes on working.
//
// # Faults
//
// A session that fails (closed, invalid, device error) is discarded and a
// new one opened on demand; a lost login is restored; object handles are
// looked up again by label or ID. Contexts that held a failed session
// report ErrContextLost; other keys and contexts go on. The module is
// finalized only when no call is in flight.
//
// A token that fails as a whole (gone, a device error, C_GetTokenInfo
// failing) makes the provider unavailable: calls fail at once with
// ErrUnavailable, never ErrKeyNotFound, while a recovery loop
// re-initializes the module, finds the token by label and logs in again,
// with backoff, until it is back (recovery.go, module.go).
package pkcs11
