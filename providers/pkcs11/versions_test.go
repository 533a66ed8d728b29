//go:build cgo

package pkcs11_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

var _ providertest.Versioned = (*pkcs11.Provider)(nil)

// TestVersions runs the versions suite with two provider instances on one
// token, as two agents sharing a network HSM would be.
func TestVersions(t *testing.T) {
	p, tok := newToken(t, nil)
	cfg := pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)}
	second, err := pkcs11.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	providertest.Versions(t, p, providertest.VersionsOptions{
		Second: second,
		Reopen: func(t testing.TB) providertest.Versioned {
			p.Close()
			second.Close()
			again, err := pkcs11.Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { again.Close() })
			return again
		},
	})
}
