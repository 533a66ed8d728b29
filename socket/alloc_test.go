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
	"github.com/hmac-agent/hmac-agent/socket"
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

// TestConnectionBeforeHelloIsSmall opens connections that never send
// HELLO and weighs the heap they hold in the server: buffers sized for
// requests (32 KiB a connection) wait until the handshake is done, so a
// crowd of silent connections costs the agent little, and leaves little
// of the runtime's bookkeeping behind when it goes.
func TestConnectionBeforeHelloIsSmall(t *testing.T) {
	const n = 400
	rig := startFake(t, &fakeAgent{}, socket.Limits{MaxConnections: 2 * n, MaxConnectionsPerUID: 2 * n})
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	before := heap()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("unix", rig.Path)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Each connection's goroutine is blocked in its first read once the
	// server has answered a HELLO on one more connection, accepted after
	// them.
	r := dialRaw(t, rig.Path, true)
	r.mac(1, "hi")
	per := (int64(heap()) - int64(before)) / n
	t.Logf("%d B of heap per connection before HELLO", per)
	if per > 8<<10 {
		t.Errorf("a connection before HELLO holds %d B of heap, want at most 8 KiB", per)
	}
}
