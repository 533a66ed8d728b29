//go:build cgo

package pkcs11_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/p11kit"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// The versions benchmarks measure what an agent pays to re-read a key's
// versions (each refresh), to rotate, and to compute a one-shot MAC, on
// a token used directly and on the same kind of token shared through
// p11-kit's remote module, as a network HSM is. Run with
//
//	go test ./providers/pkcs11 -run '^$' -bench Versioned -benchtime 2s

func versionedProviders(b *testing.B) map[string]*pkcs11.Provider {
	b.Helper()
	direct, _ := newToken(b, nil)
	tok := softhsm.Require(b, "p11kitbench")
	srv := p11kit.Require(b, softhsm.Module, "pkcs11:token="+tok.Label)
	srv.Setenv(b)
	remote, err := pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: srv.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { remote.Close() })
	ps := map[string]*pkcs11.Provider{"direct": direct, "p11kit": remote}
	for _, p := range ps {
		if _, err := p.ImportKey(context.Background(), "bench", make([]byte, 32)); err != nil {
			b.Fatal(err)
		}
		for range 2 {
			if _, err := p.RotateKey(context.Background(), "bench", nil, 0); err != nil {
				b.Fatal(err)
			}
		}
	}
	return ps
}

func BenchmarkVersioned(b *testing.B) {
	ps := versionedProviders(b)
	ctx := context.Background()
	for _, via := range []string{"direct", "p11kit"} {
		p := ps[via]
		b.Run("Versions/"+via, func(b *testing.B) {
			for b.Loop() {
				if _, err := p.Versions(ctx, "bench"); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Rotate/"+via, func(b *testing.B) {
			for b.Loop() {
				if _, err := p.RotateKey(ctx, "bench", nil, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("OneShot64/"+via, func(b *testing.B) {
			k, err := p.Key(ctx, "bench")
			if err != nil {
				b.Fatal(err)
			}
			msg, out := make([]byte, 64), make([]byte, 0, 64)
			for b.Loop() {
				if _, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, msg, out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
