//go:build cgo

package pkcs11_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/p11kit"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

// TestVersionsThroughP11Kit shares one SoftHSM2 token, served by `p11-kit
// server` in a process of its own, between two providers that reach it
// through p11-kit-client.so, as agents share a network HSM: a rotation
// through one is seen by the other's next Versions call, old versions
// stay, and rotations through both at once never share a number. Keys
// are copied there by default, as on SoftHSM2 reached directly.
func TestVersionsThroughP11Kit(t *testing.T) {
	tok := softhsm.Require(t, "p11kit")
	srv := p11kit.Require(t, softhsm.Module, "pkcs11:token="+tok.Label)
	srv.Setenv(t)
	cfg := pkcs11.Config{Name: "hsm", Module: srv.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)}
	var ps [2]*pkcs11.Provider
	for i := range ps {
		p, err := pkcs11.Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		ps[i] = p
	}
	// p11-kit passes the token's own information on: still SoftHSM2.
	if !ps[0].KeyCopies() {
		t.Error("no session copies by default on SoftHSM2 through p11-kit-client.so")
	}
	providertest.Versions(t, ps[0], providertest.VersionsOptions{Second: ps[1]})
}
