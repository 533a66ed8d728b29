//go:build cgo

package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// versionTokens numbers the version tests' tokens: labels must differ.
var versionTokens atomic.Int64

func init() {
	versionsProviders = append(versionsProviders,
		versionsProviderCase{"hsm", func(t *testing.T) versionedProvider {
			tok := softhsm.Require(t, fmt.Sprintf("versions%d", versionTokens.Add(1)))
			p, err := pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}},
		versionsProviderCase{"tpm", func(t *testing.T) versionedProvider {
			sw := swtpm.Require(t)
			p, err := tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: filepath.Join(t.TempDir(), "tpm")})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}},
	)
}
