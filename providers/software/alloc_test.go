//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it.

package software_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

func TestOneShotDoesNotAllocate(t *testing.T) {
	p := openTemp(t)
	ctx := context.Background()
	p.ImportKey(ctx, "k", []byte("0123456789abcdef0123456789abcdef"))
	k, _ := p.Key(ctx, "k")
	fast := k.(providers.OneShot)
	msg := make([]byte, 64)
	dst := make([]byte, 0, 64)
	for _, alg := range providers.Algorithms() {
		allocs := testing.AllocsPerRun(1000, func() {
			fast.SumMAC(ctx, alg, msg, dst)
		})
		if allocs != 0 {
			t.Errorf("%s: SumMAC allocates %.1f times per call", alg, allocs)
		}
	}
}
