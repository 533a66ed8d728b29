//go:build cgo

package client_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

func init() {
	versionsBackends = append(versionsBackends, versionsBackend{provider: "hsm", prepare: prepareToken})
}

// tokens numbers the tests' tokens: labels must differ.
var tokens atomic.Int64

func prepareToken(t *testing.T) func(*testing.T) providers.Provider {
	tok := softhsm.Require(t, fmt.Sprintf("versions-%d", tokens.Add(1)))
	return func(t *testing.T) providers.Provider {
		p, err := pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}
