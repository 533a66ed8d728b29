package agent_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
)

// laxProvider is a device that accepts every tag it is asked about, as a
// token or TPM might that compares only the bytes it was given. Its one
// key is "lax-key". immediate makes it run inline, as the software
// keystore does; otherwise it is a device with a deadline. With entered
// set, each Update says so there and waits for resume.
type laxProvider struct {
	immediate bool
	verifies  atomic.Int32 // tags the device was asked about
	open      atomic.Int32 // contexts holding device state

	entered, resume chan struct{}
}

var (
	_ providers.Provider  = (*laxProvider)(nil)
	_ providers.Deadliner = (*laxProvider)(nil)
	_ providers.Immediate = laxKey{}
)

func (p *laxProvider) Name() string           { return "lax" }
func (p *laxProvider) Kind() string           { return "test" }
func (p *laxProvider) Close() error           { return nil }
func (p *laxProvider) Timeout() time.Duration { return 5 * time.Second }
func (p *laxProvider) Keys(context.Context) ([]providers.KeyInfo, error) {
	return []providers.KeyInfo{{Name: "lax-key", Provider: "lax"}}, nil
}
func (p *laxProvider) Key(_ context.Context, name string) (providers.Key, error) {
	if name != "lax-key" {
		return nil, fmt.Errorf("lax: %w", providers.ErrKeyNotFound)
	}
	return laxKey{p}, nil
}

type laxKey struct{ p *laxProvider }

func (k laxKey) Name() string                      { return "lax-key" }
func (k laxKey) Supports(providers.Algorithm) bool { return true }
func (k laxKey) Immediate() bool                   { return k.p.immediate }
func (k laxKey) NewMAC(_ context.Context, alg providers.Algorithm) (providers.MAC, error) {
	return k.p.newMAC(alg), nil
}

func (p *laxProvider) newMAC(alg providers.Algorithm) *laxMAC {
	p.open.Add(1)
	return &laxMAC{p: p, alg: alg}
}

type laxMAC struct {
	p      *laxProvider
	alg    providers.Algorithm
	closed atomic.Bool
}

func (m *laxMAC) Algorithm() providers.Algorithm { return m.alg }
func (m *laxMAC) Update(context.Context, []byte) error {
	if m.p.entered != nil {
		m.p.entered <- struct{}{}
		<-m.p.resume
	}
	return nil
}
func (m *laxMAC) Copy(context.Context) (providers.MAC, error) { return m.p.newMAC(m.alg), nil }
func (m *laxMAC) Finalize(context.Context) ([]byte, error)    { return make([]byte, m.alg.Size()), nil }
func (m *laxMAC) Verify(context.Context, []byte) error {
	m.p.verifies.Add(1)
	return nil
}
func (m *laxMAC) Close() {
	if !m.closed.Swap(true) {
		m.p.open.Add(-1)
	}
}

// TestShortTagNeverReachesProvider sends tags of every wrong length, in
// one shot and from a context, to a device that would accept anything:
// each is invalid_signature, and the device is never asked. A
// full-length tag reaches it, which shows it really would have accepted.
func TestShortTagNeverReachesProvider(t *testing.T) {
	for _, immediate := range []bool{false, true} {
		t.Run(fmt.Sprintf("immediate=%v", immediate), func(t *testing.T) {
			lax := &laxProvider{immediate: immediate}
			a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{lax}})
			ctx := context.Background()
			c, err := client.Dial(ctx, a.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, alg := range []client.Algorithm{client.SHA1, client.SHA256, client.SHA512} {
				for _, n := range []int{0, 1, alg.Size() / 2, alg.Size() - 1, alg.Size() + 1} {
					if n > 64 {
						continue // longer than any digest: the client refuses it itself
					}
					tag := make([]byte, n)
					if err := c.VerifyMAC(ctx, "lax-key", alg, []byte("m"), tag); !errors.Is(err, client.ErrInvalidSignature) {
						t.Errorf("%s VerifyMAC with a %d-byte tag: %v", alg, n, err)
					}
					h, err := c.New(ctx, "lax-key", alg)
					if err != nil {
						t.Fatal(err)
					}
					h.Update([]byte("m"))
					if err := h.Verify(ctx, tag); !errors.Is(err, client.ErrInvalidSignature) {
						t.Errorf("%s Verify with a %d-byte tag: %v", alg, n, err)
					}
				}
			}
			if n := lax.verifies.Load(); n != 0 {
				t.Fatalf("the device was asked about %d tags of the wrong length", n)
			}
			full := make([]byte, client.SHA256.Size())
			if err := c.VerifyMAC(ctx, "lax-key", client.SHA256, []byte("m"), full); err != nil {
				t.Fatalf("a full-length tag: %v", err)
			}
			if n := lax.verifies.Load(); n != 1 {
				t.Fatalf("the device was asked %d times about a full-length tag", n)
			}
		})
	}
}
