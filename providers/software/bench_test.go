package software_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// BenchmarkSumMAC is a one-shot MAC of 64 bytes with each algorithm, the
// in-process cost behind every software key.
func BenchmarkSumMAC(b *testing.B) {
	p := openTemp(b)
	ctx := context.Background()
	p.ImportKey(ctx, "k", []byte("0123456789abcdef0123456789abcdef"))
	k, _ := p.Key(ctx, "k")
	fast := k.(providers.OneShot)
	msg := make([]byte, 64)
	dst := make([]byte, 0, 64)
	for _, alg := range providers.Algorithms() {
		b.Run(alg.String(), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				fast.SumMAC(ctx, alg, msg, dst)
			}
		})
	}
}

// BenchmarkCopy is a context's Copy after 1 KiB of input, which clones
// hash state (by marshalling it, for SHA-3, BLAKE2 and SM3).
func BenchmarkCopy(b *testing.B) {
	p := openTemp(b)
	ctx := context.Background()
	p.ImportKey(ctx, "k", []byte("0123456789abcdef0123456789abcdef"))
	k, _ := p.Key(ctx, "k")
	for _, alg := range providers.Algorithms() {
		b.Run(alg.String(), func(b *testing.B) {
			m, _ := k.NewMAC(ctx, alg)
			m.Update(ctx, make([]byte, 1024))
			b.ReportAllocs()
			for b.Loop() {
				c, err := m.Copy(ctx)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
