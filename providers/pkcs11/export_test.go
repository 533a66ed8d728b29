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

// LoginAttempts is how many times the provider has called C_Login.
func LoginAttempts(p *Provider) int64 { return p.logins.Load() }
