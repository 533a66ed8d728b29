package socket_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

func TestInFlightLimit(t *testing.T) {
	a := startFake(t, &fakeAgent{delay: 300 * time.Millisecond}, socket.Limits{MaxInFlight: 4})
	r := dialRaw(t, a.Path, true)
	for i := uint32(1); i <= 6; i++ {
		r.send(wire.Message{Type: wire.TypeMAC, ID: i, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key"), Data: []byte("x")})
	}
	limited := 0
	for range 6 {
		m := r.recv()
		if m.Type == wire.TypeError {
			if m.Code != wire.CodeOf(providers.ErrLimit) || !strings.Contains(string(m.Data), "at most 4") {
				t.Errorf("error %s %q", m.Code, m.Data)
			}
			limited++
		}
	}
	if limited != 2 {
		t.Errorf("%d of 6 requests refused with a limit of 4 in flight, want 2", limited)
	}
	dialRaw(t, a.Path, true).mac(1, "others are served")
}

func TestConnectionLimit(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{MaxConnections: 2})
	dialRaw(t, a.Path, true)
	dialRaw(t, a.Path, true)
	r := dialRaw(t, a.Path, false)
	m := r.expectError(0, providers.ErrLimit)
	if !strings.Contains(string(m.Data), "too many connections (at most 2)") {
		t.Errorf("message %q", m.Data)
	}
	r.expectClosed()
}

// TestClientsKilledMidStream: 10 000 connections open contexts, stream
// part of a message and vanish. Nothing may stay behind.
func TestClientsKilledMidStream(t *testing.T) {
	slow := &agenttest.SlowProvider{Secret: testSecret}
	a := start(t, agenttest.Options{Providers: []providers.Provider{slow}})
	baseGoroutines := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 10000
	for i := range n {
		nc, err := net.Dial("unix", a.Path)
		for tries := 0; errors.Is(err, syscall.EAGAIN) && tries < 1000; tries++ {
			time.Sleep(time.Millisecond) // the listen backlog is full
			nc, err = net.Dial("unix", a.Path)
		}
		if err != nil {
			t.Fatal(err)
		}
		key := "k"
		if i%4 == 0 {
			key = "slow-key"
		}
		var b []byte
		for _, m := range []wire.Message{
			{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1},
			{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte(key)},
			{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: make([]byte, 2000)},
			{Type: wire.TypeCopy, ID: 3, Context: 1, NewContext: 2},
			{Type: wire.TypeUpdate, ID: 4, Context: 2, Data: make([]byte, 100)},
		} {
			b, _ = m.Append(b)
		}
		nc.Write(b[:len(b)-i%50]) // cut off mid-frame, sometimes
		nc.Close()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := a.Agent.Status(context.Background())
		if st.Contexts == 0 && st.Connections == 0 && slow.Opened.Load() == 0 && a.Server.Connections() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d killed clients: %d contexts, %d sessions, %d connections, %d device contexts",
				n, st.Contexts, st.Connections, a.Server.Connections(), slow.Opened.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Goroutines finish a moment after their connection is gone: wait
	// for them, as a leak would not go away.
	goroutines := runtime.NumGoroutine()
	for end := time.Now().Add(10 * time.Second); goroutines > baseGoroutines+10 && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
		goroutines = runtime.NumGoroutine()
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if goroutines > baseGoroutines+10 {
		t.Errorf("goroutines: %d before, %d after %d killed clients", baseGoroutines, goroutines, n)
	}
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	if growth > 16<<20 {
		t.Errorf("heap grew by %d MiB after %d killed clients", growth>>20, n)
	}
	t.Logf("%d killed clients: goroutines %d -> %d, heap in use %+d KiB", n, baseGoroutines, goroutines, growth>>10)
}

// TestServeAfterShutdownClosesListener: a stop that comes before the
// server took its listener (a signal just after the agent started) still
// closes it and removes its socket file, as a stop after would.
func TestServeAfterShutdownClosesListener(t *testing.T) {
	path := filepath.Join(agenttest.SocketDir(t), "agent.sock")
	l, err := socket.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := socket.NewServer(&fakeAgent{}, socket.Limits{}, nil)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), l); !errors.Is(err, providers.ErrClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after the stop: %v", err)
	}
}

func TestListenRefusesUnsafePlaces(t *testing.T) {
	dir := agenttest.SocketDir(t)
	sub := filepath.Join(dir, "run")
	path := filepath.Join(sub, "agent.sock")

	l, err := socket.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(sub); fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	// A live socket is not taken over.
	if _, err := socket.Listen(path, -1); err == nil || !strings.Contains(err.Error(), "another agent is listening") {
		t.Errorf("second agent on a live socket: %v", err)
	}
	// A stale one is removed.
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left for the test: %v", err)
	}
	l2, err := socket.Listen(path, -1)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l2.Close()

	os.Chmod(sub, 0o777)
	if _, err := socket.Listen(path, -1); err == nil || !strings.Contains(err.Error(), "must not be writable by group or others") {
		t.Errorf("world-writable directory: %v", err)
	}
	os.Chmod(sub, 0o700)
	if os.Geteuid() == 0 {
		os.Chown(sub, 1234, -1)
		if _, err := socket.Listen(path, -1); err == nil || !strings.Contains(err.Error(), "owned by uid 1234") {
			t.Errorf("directory of another user: %v", err)
		}
		os.Chown(sub, 0, -1)
	}
	os.WriteFile(path, []byte("not a socket"), 0o600)
	if _, err := socket.Listen(path, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a file in the way: %v", err)
	}
}

// TestShutdownFinishesRequestsInFlight: requests already sent when the
// agent is told to stop get their replies; then the connection closes.
func TestShutdownFinishesRequestsInFlight(t *testing.T) {
	a := startFake(t, &fakeAgent{delay: 300 * time.Millisecond}, socket.Limits{})
	r := dialRaw(t, a.Path, true)
	r.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key")})
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: []byte("in flight")})
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 3, Context: 1})
	time.Sleep(50 * time.Millisecond) // the finalize is running on the slow device
	r.send(wire.Message{Type: wire.TypeMAC, ID: 4, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte("just sent")})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- a.Server.Shutdown(ctx)
	}()
	got := map[uint32]wire.Message{}
	for range 3 {
		m := r.recv()
		got[m.ID] = m
	}
	if got[3].Type != wire.TypeTag || !bytes.Equal(got[3].Tag, reference("in flight")) {
		t.Errorf("finalize in flight: %+v", got[3])
	}
	if got[4].Type != wire.TypeTag || !bytes.Equal(got[4].Tag, reference("just sent")) {
		t.Errorf("request sent before the stop: %+v", got[4])
	}
	r.expectClosed()
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := net.Dial("unix", a.Path); err == nil {
		t.Error("new connections are still accepted after Shutdown")
	}
}

// TestQueuedBytesLimit: a client streaming faster than its device is held
// to max_queued_bytes, the reader resumes only once half has drained, and
// the whole stream still arrives.
func TestQueuedBytesLimit(t *testing.T) {
	gate := make(chan struct{})
	const limit, part, parts = 64 << 10, 16 << 10, 64
	a := startFake(t, &fakeAgent{gate: gate}, socket.Limits{MaxQueuedBytes: limit})
	r := dialRaw(t, a.Path, true)
	r.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key")})
	if m := r.recv(); m.Type != wire.TypeOK || m.ID != 1 {
		t.Fatalf("OPEN reply %s id=%d %q", m.Type, m.ID, m.Data)
	}
	var stream []byte
	data := make([]byte, part)
	for i := range parts {
		data[0] = byte(i)
		stream, _ = (&wire.Message{Type: wire.TypeUpdate, ID: uint32(2 + i), Context: 1, Data: data}).Append(stream)
	}
	stream, _ = (&wire.Message{Type: wire.TypeFinalize, ID: 100, Context: 1}).Append(stream)
	written := make(chan error, 1)
	go func() {
		_, err := r.nc.Write(stream) // 1 MiB: more than the socket buffers and the limit hold
		written <- err
	}()

	// The first UPDATE waits at the gate; the reader fills the backlog
	// and stops.
	deadline := time.Now().Add(5 * time.Second)
	for a.Server.QueuedBytes() < limit-part && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if n := a.Server.QueuedBytes(); n != limit {
		t.Fatalf("%d bytes queued behind a held device, want %d", n, limit)
	}
	select {
	case err := <-written:
		t.Fatalf("the client wrote 1 MiB while the device held its first update (%v)", err)
	default:
	}

	// One update done leaves the backlog above half: the reader stays
	// put, rather than waking for every frame.
	gate <- struct{}{}
	time.Sleep(100 * time.Millisecond)
	if n := a.Server.QueuedBytes(); n != limit-part {
		t.Fatalf("%d bytes queued after one update of %d finished, want %d", n, limit, limit-part)
	}

	most := 0
	close(gate)
	for done := false; !done; {
		most = max(most, a.Server.QueuedBytes())
		select {
		case err := <-written:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		case <-time.After(time.Millisecond):
		}
	}
	if most > limit {
		t.Errorf("%d bytes queued while draining, limit %d", most, limit)
	}
	want := hmac.New(sha256.New, testSecret)
	for i := range parts {
		data[0] = byte(i)
		want.Write(data)
	}
	if m := r.recv(); m.Type != wire.TypeTag || m.ID != 100 || !bytes.Equal(m.Tag, want.Sum(nil)) {
		t.Fatalf("FINALIZE reply %s id=%d %x %q", m.Type, m.ID, m.Tag, m.Data)
	}
	if n := a.Server.QueuedBytes(); n != 0 {
		t.Errorf("%d bytes still queued after the stream", n)
	}
}
