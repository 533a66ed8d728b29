package agenttest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"hash"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// SlowProvider is a provider that waits, as a device does: every Finalize
// (and so every one-shot) takes Delay. An Update of "fail" fails, to
// exercise sticky errors. Its one key is "slow-key", SHA-256 only.
type SlowProvider struct {
	Delay  time.Duration
	Secret []byte
	Opened atomic.Int64 // contexts open now
	// UpdateGate, if set, holds each Update until it receives a value
	// (or the channel is closed), whatever its ctx says: a device that
	// stopped answering mid-call.
	UpdateGate chan struct{}
	// Seen, if set, gets a copy of each Update's input as the device
	// reads it, after UpdateGate.
	Seen func(input []byte)
	// Deadline is what Timeout reports (providers.Deadliner); zero lets
	// the agent choose.
	Deadline time.Duration
}

// Timeout reports Deadline.
func (p *SlowProvider) Timeout() time.Duration { return p.Deadline }

var errDevice = errors.New("slow: device said no (CKR_DEVICE_ERROR 0x30)")

func (p *SlowProvider) Name() string { return "slow" }
func (p *SlowProvider) Kind() string { return "test" }
func (p *SlowProvider) Close() error { return nil }
func (p *SlowProvider) Keys(context.Context) ([]providers.KeyInfo, error) {
	return []providers.KeyInfo{{Name: "slow-key", Provider: "slow"}}, nil
}
func (p *SlowProvider) Key(_ context.Context, name string) (providers.Key, error) {
	if name != "slow-key" {
		return nil, fmt.Errorf("slow: %w", providers.ErrKeyNotFound)
	}
	return slowKey{p}, nil
}

type slowKey struct{ p *SlowProvider }

func (k slowKey) Name() string                        { return "slow-key" }
func (k slowKey) Supports(a providers.Algorithm) bool { return a == providers.SHA256 }
func (k slowKey) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	k.p.Opened.Add(1)
	return &slowMAC{p: k.p, h: hmac.New(hashes.New(alg), k.p.Secret)}, nil
}

type slowMAC struct {
	p *SlowProvider
	h hash.Hash
}

func (m *slowMAC) Algorithm() providers.Algorithm { return providers.SHA256 }
func (m *slowMAC) Update(_ context.Context, b []byte) error {
	if m.h == nil {
		return providers.ErrAlreadyFinalized
	}
	if m.p.UpdateGate != nil {
		<-m.p.UpdateGate
	}
	if m.p.Seen != nil {
		m.p.Seen(bytes.Clone(b))
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
	m.p.Opened.Add(1)
	return &slowMAC{p: m.p, h: c.(hash.Hash)}, nil
}
func (m *slowMAC) Finalize(ctx context.Context) ([]byte, error) {
	if m.h == nil {
		return nil, providers.ErrAlreadyFinalized
	}
	if m.p.Delay > 0 {
		select {
		case <-time.After(m.p.Delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
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
		m.p.Opened.Add(-1)
	}
}
