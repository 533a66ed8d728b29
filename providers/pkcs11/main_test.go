//go:build cgo

package pkcs11_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

func TestMain(m *testing.M) {
	if os.Getenv(restrictEnv) != "" {
		os.Exit(restrictKey()) // the test binary as another program
	}
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}

var tokenSeq atomic.Int32

// newToken makes a fresh SoftHSM2 token and opens a provider on it.
func newToken(t testing.TB, tweak func(*pkcs11.Config)) (*pkcs11.Provider, *softhsm.Token) {
	t.Helper()
	tok := softhsm.Require(t, fmt.Sprintf("test%d", tokenSeq.Add(1)))
	cfg := pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)}
	if tweak != nil {
		tweak(&cfg)
	}
	p, err := pkcs11.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, tok
}
