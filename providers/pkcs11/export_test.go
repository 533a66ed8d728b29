//go:build cgo

package pkcs11

import (
	"testing"
	"time"
)

// SetStaleAfter shortens how long a prepared operation or a key's session
// copy is used unchecked, for the test's duration.
func SetStaleAfter(t testing.TB, d time.Duration) {
	old := staleAfter
	staleAfter = d
	t.Cleanup(func() { staleAfter = old })
}

// Prepared counts the operations prepared or being prepared.
func (p *Provider) Prepared() int {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	return len(p.prep)
}
