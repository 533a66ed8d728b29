//go:build cgo

package pkcs11

import (
	"testing"
	"time"
)

// SetStaleAfter shortens how long a key's session copy is used
// unchecked, for the test's duration.
func SetStaleAfter(t testing.TB, d time.Duration) {
	old := staleAfter
	staleAfter = d
	t.Cleanup(func() { staleAfter = old })
}

// SetStaleClaim changes how old an uncommitted rotation claim must be to
// be taken for stale, for the test's duration.
func SetStaleClaim(t testing.TB, d time.Duration) {
	old := staleClaim
	staleClaim = d
	t.Cleanup(func() { staleClaim = old })
}

// LoginAttempts is how many times the provider has called C_Login.
func LoginAttempts(p *Provider) int64 { return p.logins.Load() }
