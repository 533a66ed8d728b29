package providers

import (
	"context"
	"time"
)

// Key versions. A key is a series of versions 1, 2, 3, ...; one of them is
// current and computes new tags, and older ones may go on verifying until
// they are retired. A provider that keeps versions stores them beside the
// key objects themselves (files in a keystore, objects in a token, blobs in
// a TPM state directory), with a record of their states, so that every
// agent sharing the provider sees the same versions. A key made before
// versions existed is version 1 of its name, with its tags unchanged, and
// loads without any step.

// VersionState is where a version is in its life.
type VersionState string

const (
	// VersionCurrent computes new tags and verifies. A key has exactly one.
	VersionCurrent VersionState = "current"
	// VersionPrevious was current once; it verifies until it is retired
	// (by an operator, or by an agent once the key's grace has passed).
	VersionPrevious VersionState = "previous"
	// VersionRetired no longer verifies; its object is kept.
	VersionRetired VersionState = "retired"
	// VersionDestroyed no longer verifies and its object was deleted.
	VersionDestroyed VersionState = "destroyed"
)

// VersionInfo describes one version of a key without revealing it.
type VersionInfo struct {
	Version int          `json:"version"`
	State   VersionState `json:"state"`
	Created time.Time    `json:"created,omitzero"`
	// Superseded is when the version stopped being current; zero while it
	// is current, and for version 1 of a key made before versions existed
	// until it is first superseded.
	Superseded time.Time `json:"superseded,omitzero"`
	// Retired is when it stopped verifying; zero while it verifies.
	Retired time.Time `json:"retired,omitzero"`
	// VerifiesUntil is when a previous version stops verifying under the
	// key's grace (verify_grace); zero when it verifies until it is
	// retired. Providers leave it zero: the grace is the agent's.
	VerifiesUntil time.Time `json:"verifies_until,omitzero"`
}

// Versioner is a provider whose keys have versions. Key(ctx, name) returns
// the current version.
//
// The version record is the provider's, not the agent's: several agents
// may share one provider (a network HSM), and each reads the record again
// at its refresh interval. A provider must never let two versions of one
// key share a number, even when two agents rotate at once.
type Versioner interface {
	// Versions returns the named key's versions, oldest first, destroyed
	// ones included. ErrKeyNotFound if there is no such key.
	Versions(ctx context.Context, name string) ([]VersionInfo, error)
	// KeyVersion returns version n of the named key, whatever its state
	// but destroyed: the agent decides what a state allows.
	// ErrKeyNotFound if the key or the version does not exist or was
	// destroyed.
	KeyVersion(ctx context.Context, name string, n int) (Key, error)
	// RotateKey adds a version and makes it current; the version that was
	// current becomes previous. The new version is generated inside the
	// provider when secret is nil (length bytes; 0 means the provider's
	// default), else imported from secret, which the provider does not
	// retain. ErrKeyNotFound if there is no such key; ErrNotSupported if
	// the provider cannot make keys that way.
	RotateKey(ctx context.Context, name string, secret []byte, length int) (VersionInfo, error)
	// RetireVersion stops version n verifying, and with destroy deletes
	// its object too. Retiring the current version is ErrInvalidArgument;
	// retiring a retired version again (to destroy it) is allowed.
	// ErrKeyNotFound if the key or the version does not exist.
	RetireVersion(ctx context.Context, name string, n int, destroy bool) error
}
