//go:build linux

package socket_test

import (
	"encoding/binary"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/threadprio"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// watchNice scans this process's threads until stop, and reports
// whether any ran at threadprio.Nice meanwhile.
func watchNice(stop <-chan struct{}) <-chan bool {
	seen := make(chan bool, 1)
	go func() {
		var any bool
		for {
			select {
			case <-stop:
				seen <- any
				return
			default:
			}
			any = any || niceThreads() > 0
		}
	}()
	return seen
}

// requireThreadPriority fails the test under CI, and skips it elsewhere,
// where this process may not set a thread's nice value back.
func requireThreadPriority(t *testing.T) {
	t.Helper()
	if !threadprio.Available() {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set, and this process may not set a thread's nice value back (it runs as root there)")
		}
		t.Skip("this process may not set a thread's nice value back")
	}
}

// niceThreads counts this process's threads at threadprio.Nice.
func niceThreads() int {
	tasks, _ := os.ReadDir("/proc/self/task")
	n := 0
	for _, e := range tasks {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if v, err := threadprio.ThreadNice(tid); err == nil && v == threadprio.Nice {
			n++
		}
	}
	return n
}

// TestFloodingReaderRunsInTheBackground: while another uid is connected,
// a client that pipelines has its requests read and run at a lower
// kernel priority, one that waits for each reply at the normal one, and
// no thread stays lowered once the flood is served.
func TestFloodingReaderRunsInTheBackground(t *testing.T) {
	requireThreadPriority(t)
	a := start(t, agenttest.Options{})
	flood := dialRaw(t, a.Path, true)
	one := dialRaw(t, a.Path, true)
	socket.Share(a.Server)

	stop := make(chan struct{})
	seen := watchNice(stop)
	for i := range 300 {
		one.mac(uint32(i+1), "one at a time")
	}
	close(stop)
	if <-seen {
		t.Error("a thread ran at the lower priority while only a client waiting for each reply was served")
	}

	req, _ := (&wire.Message{Type: wire.TypeMAC, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: make([]byte, 64)}).Append(nil)
	const n = 20000
	buf := make([]byte, 0, n*len(req))
	for i := range n {
		binary.BigEndian.PutUint32(req[5:9], uint32(i+1))
		buf = append(buf, req...)
	}
	stop = make(chan struct{})
	seen = watchNice(stop)
	var read atomic.Int32
	go func() {
		for range n {
			if m := flood.recv(); m.Type != wire.TypeTag {
				t.Errorf("flood reply %s", m.Type)
				return
			}
			read.Add(1)
		}
	}()
	flood.sendRaw(buf)
	for end := time.Now().Add(30 * time.Second); read.Load() < n && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	if !<-seen {
		t.Error("no thread ran at the lower priority while a pipelining client was served")
	}
	one.mac(1000, "after") // the flood's reader is idle again
	if k := niceThreads(); k != 0 {
		t.Errorf("%d threads still at the lower priority after the flood", k)
	}
}

// TestWaitingReaderKeepsNoThread: a reader at the lower priority that
// goes on to wait for the rest of a frame its client sent half of does
// not wait on a thread of its own at that priority: a crowd of such
// connections would otherwise hold a thread each.
func TestWaitingReaderKeepsNoThread(t *testing.T) {
	requireThreadPriority(t)
	a := start(t, agenttest.Options{})
	r := dialRaw(t, a.Path, true)
	dialRaw(t, a.Path, true)
	socket.Share(a.Server)
	var b []byte
	for i := range 50 {
		b, _ = (&wire.Message{Type: wire.TypeMAC, ID: uint32(i + 1), Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte("x")}).Append(b)
	}
	half, _ := (&wire.Message{Type: wire.TypeMAC, ID: 99, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: make([]byte, 100)}).Append(nil)
	r.sendRaw(append(b, half[:len(half)/2]...))
	for range 50 {
		if m := r.recv(); m.Type != wire.TypeTag {
			t.Fatalf("reply %s", m.Type)
		}
	}
	// The reader now waits for the rest of frame 99.
	for end := time.Now().Add(2 * time.Second); niceThreads() != 0 && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	if k := niceThreads(); k != 0 {
		t.Errorf("%d threads at the lower priority while the reader waits for its peer", k)
	}
	r.sendRaw(half[len(half)/2:])
	if m := r.recv(); m.Type != wire.TypeTag || m.ID != 99 {
		t.Fatalf("the frame sent in two halves: %s id=%d", m.Type, m.ID)
	}
}

// TestDeafReaderKeepsNoThread: readers at the lower priority whose peers
// stop taking their replies do not wait for them on threads of their
// own: callers that send requests and never read held a thread each,
// which the runtime keeps for good. A reader may come to wait in its own
// flush between reads, at the normal priority, or in a write in the
// middle of its requests, in the background; six of them make it all
// but certain that one waits in the middle.
func TestDeafReaderKeepsNoThread(t *testing.T) {
	requireThreadPriority(t)
	a := start(t, agenttest.Options{})
	dialRaw(t, a.Path, true)
	var deaf []*raw
	for range 6 {
		deaf = append(deaf, dialRaw(t, a.Path, true))
	}
	socket.Share(a.Server) // as if another uid were connected
	stop := make(chan struct{})
	seen := watchNice(stop)
	for _, r := range deaf {
		go r.nc.Write(pipelinedMACs(20000)) // waits once the agent stops reading
	}
	// The replies fill the socket's buffers long before the requests
	// end, and every reader then waits to write.
	time.Sleep(time.Second)
	close(stop)
	if !<-seen {
		t.Fatal("no reader ran at the lower priority")
	}
	end := time.Now().Add(10 * time.Second)
	for niceThreads() != 0 && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if k := niceThreads(); k != 0 {
		t.Errorf("%d threads at the lower priority while readers wait for peers that read nothing", k)
	}
}
