//go:build !race

// The race detector allocates on its own; allocation counts mean nothing
// under it.

package socket_test

import (
	"bufio"
	"encoding/binary"
	"net"
	"runtime"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// TestOneShotPathDoesNotAllocate sends one-shot MACs on a software key
// through a real server and counts heap allocations per request in
// steady state: the reader, the agent, the provider and the reply.
func TestOneShotPathDoesNotAllocate(t *testing.T) {
	a := start(t, agenttest.Options{})
	nc, err := net.Dial("unix", a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hello, _ := (&wire.Message{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1}).Append(nil)
	nc.Write(hello)
	fr := wire.NewFrameReader(bufio.NewReaderSize(nc, 64<<10), 1<<20)
	fr.Next()
	req, _ := (&wire.Message{Type: wire.TypeMAC, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: make([]byte, 64)}).Append(nil)
	const batch = 100
	buf := make([]byte, 0, batch*len(req))
	round := func() {
		buf = buf[:0]
		for i := range batch {
			binary.BigEndian.PutUint32(req[5:9], uint32(i+1))
			buf = append(buf, req...)
		}
		nc.Write(buf)
		for range batch {
			body, err := fr.Next()
			if err != nil || wire.Type(body[0]) != wire.TypeTag {
				t.Fatalf("reply: %v", err)
			}
		}
	}
	for range 50 { // warm up pools and buffers
		round()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const rounds = 200
	for range rounds {
		round()
	}
	runtime.ReadMemStats(&after)
	perRequest := float64(after.Mallocs-before.Mallocs) / (rounds * batch)
	t.Logf("%.3f allocations per one-shot request (client and server together)", perRequest)
	if perRequest > 0.05 {
		t.Errorf("%.3f allocations per one-shot request in steady state, want none", perRequest)
	}
}
