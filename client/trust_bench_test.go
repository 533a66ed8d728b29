package client_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// BenchmarkDial is a new connection: connect, the agent's uid check
// (SO_PEERCRED), the handshake and close. The check is one getsockopt.
func BenchmarkDial(b *testing.B) {
	a := agenttest.Start(b, agenttest.Options{})
	ctx := context.Background()
	for b.Loop() {
		c, err := client.Dial(ctx, a.Path)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
