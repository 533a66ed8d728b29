//go:build cgo

package pkcs11_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
)

// The benchmarks put the agent beside miekg/pkcs11 used directly on the
// same token and key: what the socket, the agent and the session pool add
// to the token's own cost. Run with
//
//	go test ./providers/pkcs11 -run '^$' -bench . -benchtime 2s

const benchStreamChunk = 64 << 10

type benchRig struct {
	d   *directToken
	key p11.ObjectHandle
	c   *client.Client
}

func newBenchRig(b *testing.B) *benchRig {
	b.Helper()
	p, tok := newToken(b, nil)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "bench", make([]byte, 32)); err != nil {
		b.Fatal(err)
	}
	a := agenttest.Start(b, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	d := direct(b, tok)
	return &benchRig{d: d, key: d.find("bench"), c: c}
}

// directSign is one one-shot MAC with miekg/pkcs11 on session s.
func (r *benchRig) directSign(b *testing.B, s p11.SessionHandle, msg []byte) {
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}
	if err := r.d.ctx.SignInit(s, mech, r.key); err != nil {
		b.Fatal(err)
	}
	if _, err := r.d.ctx.Sign(s, msg); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkOneShot64(b *testing.B) {
	r := newBenchRig(b)
	msg := make([]byte, 64)
	// RunParallel runs parallelism×GOMAXPROCS goroutines; on this
	// 2-CPU machine 1 and 4 give 2 and 8 concurrent clients.
	for _, par := range []int{1, 4} {
		clients := par * runtime.GOMAXPROCS(0)
		b.Run(fmt.Sprintf("direct/clients=%d", clients), func(b *testing.B) {
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				s, err := r.d.ctx.OpenSession(r.d.slot, p11.CKF_SERIAL_SESSION)
				if err != nil {
					b.Fatal(err)
				}
				defer r.d.ctx.CloseSession(s)
				for pb.Next() {
					r.directSign(b, s, msg)
				}
			})
		})
		b.Run(fmt.Sprintf("agent/clients=%d", clients), func(b *testing.B) {
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := r.c.MAC(context.Background(), "bench", client.SHA256, msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

func BenchmarkStream(b *testing.B) {
	r := newBenchRig(b)
	chunk := make([]byte, benchStreamChunk)
	b.Run("direct", func(b *testing.B) {
		s := r.d.s
		if err := r.d.ctx.SignInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}, r.key); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(benchStreamChunk)
		for b.Loop() {
			if err := r.d.ctx.SignUpdate(s, chunk); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := r.d.ctx.SignFinal(s); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("agent", func(b *testing.B) {
		ctx := context.Background()
		h, err := r.c.New(ctx, "bench", client.SHA256)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(benchStreamChunk)
		b.ResetTimer()
		for range b.N {
			if err := h.Update(chunk); err != nil {
				b.Fatal(err)
			}
		}
		// Updates do not wait; Finalize is timed so queued work counts.
		if _, err := h.Finalize(ctx); err != nil {
			b.Fatal(err)
		}
	})
}
