//go:build !cgo

package pkcs11

import (
	"context"
	"errors"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Provider is unavailable without cgo.
type Provider struct{ providers.Provider }

// Open fails: PKCS#11 modules are C libraries, loaded through cgo.
func Open(ctx context.Context, cfg Config) (*Provider, error) {
	return nil, errors.New("pkcs11: this hmac-agent was built without cgo (CGO_ENABLED=0); PKCS#11 needs it")
}

// Algorithms is empty: the provider cannot open without cgo.
func (p *Provider) Algorithms() []providers.Algorithm { return nil }

// KeyCopies is false: the provider cannot open without cgo.
func (p *Provider) KeyCopies() bool { return false }
