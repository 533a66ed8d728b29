package socket_test

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"hash"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// slowProvider is a provider that waits, as a device does: every Finalize
// takes delay. An Update of "fail" fails, to exercise sticky errors.
type slowProvider struct {
	delay  time.Duration
	secret []byte
	opened atomic.Int64
}

var errDevice = errors.New("slow: device said no (CKR_DEVICE_ERROR 0x30)")

func (p *slowProvider) Name() string { return "slow" }
func (p *slowProvider) Kind() string { return "test" }
func (p *slowProvider) Close() error { return nil }
func (p *slowProvider) Keys(context.Context) ([]providers.KeyInfo, error) {
	return []providers.KeyInfo{{Name: "slow-key", Provider: "slow"}}, nil
}
func (p *slowProvider) Key(_ context.Context, name string) (providers.Key, error) {
	if name != "slow-key" {
		return nil, fmt.Errorf("slow: %w", providers.ErrKeyNotFound)
	}
	return slowKey{p}, nil
}

type slowKey struct{ p *slowProvider }

func (k slowKey) Name() string                        { return "slow-key" }
func (k slowKey) Supports(a providers.Algorithm) bool { return a == providers.SHA256 }
func (k slowKey) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	k.p.opened.Add(1)
	return &slowMAC{p: k.p, h: hmac.New(alg.NewHash(), k.p.secret)}, nil
}

type slowMAC struct {
	p *slowProvider
	h hash.Hash
}

func (m *slowMAC) Algorithm() providers.Algorithm { return providers.SHA256 }
func (m *slowMAC) Update(_ context.Context, b []byte) error {
	if m.h == nil {
		return providers.ErrAlreadyFinalized
	}
	if string(b) == "fail" {
		return fmt.Errorf("%w: %w", providers.ErrUnavailable, errDevice)
	}
	m.h.Write(b)
	return nil
}
func (m *slowMAC) Copy(context.Context) (providers.MAC, error) {
	if m.h == nil {
		return nil, providers.ErrAlreadyFinalized
	}
	c, err := m.h.(hash.Cloner).Clone()
	if err != nil {
		return nil, err
	}
	m.p.opened.Add(1)
	return &slowMAC{p: m.p, h: c.(hash.Hash)}, nil
}
func (m *slowMAC) Finalize(ctx context.Context) ([]byte, error) {
	if m.h == nil {
		return nil, providers.ErrAlreadyFinalized
	}
	select {
	case <-time.After(m.p.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	tag := m.h.Sum(nil)
	m.Close()
	return tag, nil
}
func (m *slowMAC) Verify(ctx context.Context, tag []byte) error {
	sum, err := m.Finalize(ctx)
	if err != nil {
		return err
	}
	if !hmac.Equal(sum, tag) {
		return providers.ErrInvalidSignature
	}
	return nil
}
func (m *slowMAC) Close() {
	if m.h != nil {
		m.h = nil
		m.p.opened.Add(-1)
	}
}
