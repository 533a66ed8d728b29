package socket_test

import (
	"context"
	"crypto/sha256"
	"os"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// BenchmarkConnect measures what reading a caller's identity costs a
// connection: dial, handshake, one MAC, close, with no policy that reads
// identity (credentials only), with one that names a unit (executable
// path, cgroup, unit), and with one that names a digest (also the
// executable's SHA-256, from the cache after the first connection).
func BenchmarkConnect(b *testing.B) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256([]byte("not this binary"))
	for _, bc := range []struct {
		name   string
		policy agent.Policy
	}{
		{"credentials", agent.Policy{UIDs: []uint32{4242}, Ops: agent.OpMAC}},
		{"identity", agent.Policy{Units: []string{"webhook.service"}, Ops: agent.OpMAC}},
		{"digest", agent.Policy{Executables: []agent.Executable{{Path: self, SHA256: sum[:]}}, Ops: agent.OpMAC}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a := agenttest.Start(b, agenttest.Options{Keys: []agent.KeyConfig{{Name: "svc", Provider: "soft", Policy: bc.policy}}})
			ctx := context.Background()
			if _, err := a.Soft.ImportKey(ctx, "k", []byte("benchmark-key-0123456789abcdef")); err != nil {
				b.Fatal(err)
			}
			msg := make([]byte, 64)
			b.ResetTimer()
			for b.Loop() {
				c, err := client.Dial(ctx, a.Path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.MAC(ctx, "k", client.SHA256, msg); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
		})
	}
}
