//go:build cgo

package pkcs11

import (
	"testing"
	"time"
)

// SetPreparedMaxAge shortens how long a prepared operation may sign, for
// the test's duration.
func SetPreparedMaxAge(t testing.TB, d time.Duration) {
	old := preparedMaxAge
	preparedMaxAge = d
	t.Cleanup(func() { preparedMaxAge = old })
}

// Prepared counts the operations prepared or being prepared.
func (p *Provider) Prepared() int {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	return len(p.prep)
}
