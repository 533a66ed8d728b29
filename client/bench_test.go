package client_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// The benchmarks measure the whole path (client, socket, agent, software
// provider) beside in-process crypto/hmac, the floor. Run them with
//
//	go test -run '^$' -bench . -benchmem ./client/

func benchClient(b *testing.B) (*client.Client, []byte) {
	b.Helper()
	a := agenttest.Start(b, agenttest.Options{})
	key := []byte("0123456789abcdef0123456789abcdef")
	if _, err := a.Soft.ImportKey(context.Background(), "bench", key); err != nil {
		b.Fatal(err)
	}
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, key
}

func BenchmarkInProcessOneShot64(b *testing.B) {
	h := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	msg := make([]byte, 64)
	var tag [32]byte
	b.ReportAllocs()
	for b.Loop() {
		h.Reset()
		h.Write(msg)
		h.Sum(tag[:0])
	}
}

func BenchmarkOneShotPingPong64(b *testing.B) {
	c, _ := benchClient(b)
	ctx := context.Background()
	msg := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MAC(ctx, "bench", client.SHA256, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOneShotPipelined64 shares one client (one connection) among
// many goroutines, so requests are in flight together.
func BenchmarkOneShotPipelined64(b *testing.B) {
	c, _ := benchClient(b)
	ctx := context.Background()
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		msg := make([]byte, 64)
		for pb.Next() {
			if _, err := c.MAC(ctx, "bench", client.SHA256, msg); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

const streamChunk = 64 << 10

func BenchmarkInProcessStream(b *testing.B) {
	h := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	chunk := make([]byte, streamChunk)
	b.SetBytes(streamChunk)
	for b.Loop() {
		h.Write(chunk)
	}
	h.Sum(nil)
}

// BenchmarkStream streams 64 KiB updates into one context; MB/s is the
// streaming rate.
func BenchmarkStream(b *testing.B) {
	c, _ := benchClient(b)
	ctx := context.Background()
	h, err := c.New(ctx, "bench", client.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, streamChunk)
	b.SetBytes(streamChunk)
	b.ResetTimer()
	for range b.N {
		if err := h.Update(chunk); err != nil {
			b.Fatal(err)
		}
	}
	// Updates do not wait; the agent is done with them when Finalize
	// returns, so it is timed too.
	if _, err := h.Finalize(ctx); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkCopy(b *testing.B) {
	c, _ := benchClient(b)
	ctx := context.Background()
	h, err := c.New(ctx, "bench", client.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	h.Update(make([]byte, 1000))
	for b.Loop() {
		cp, err := h.Copy(ctx)
		if err != nil {
			b.Fatal(err)
		}
		cp.Close()
	}
}
