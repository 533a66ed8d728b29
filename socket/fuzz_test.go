package socket_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// fuzzServer starts one agent for the whole fuzzing run (one per fuzzing
// worker process), with a software key "k" and a slow device key, so both
// the inline and the queued handlers are reached, and a backlog small
// enough that the reader waits for it. It is stopped and its files
// removed when the fuzz target ends.
func fuzzServer(f *testing.F) *socket.Server {
	dir, err := os.MkdirTemp("", "hmac-agent-fuzz-")
	if err != nil {
		f.Fatal(err)
	}
	slow := &agenttest.SlowProvider{Secret: testSecret}
	a, stop, err := agenttest.Run(filepath.Join(dir, "keys"), filepath.Join(dir, "agent.sock"),
		agenttest.Options{Providers: []providers.Provider{slow}, SocketLimits: socket.Limits{MaxQueuedBytes: 256}})
	if err != nil {
		os.RemoveAll(dir)
		f.Fatal(err)
	}
	f.Cleanup(func() {
		stop()
		os.RemoveAll(dir)
	})
	a.Soft.ImportKey(context.Background(), "k", testSecret)
	return a.Server
}

// pair is a connected pair of Unix sockets: peer credentials work on it as
// on an accepted connection.
func pair(t testing.TB) (server, client *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

func hello() []byte {
	b, _ := (&wire.Message{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1}).Append(nil)
	return b
}

// FuzzConnection sends any bytes to a connection of a real server: every
// message handler, the frame decoder and the handshake. The server must
// neither crash nor hang, and must go on serving others.
func FuzzConnection(f *testing.F) {
	srv := fuzzServer(f)
	var all []byte
	for _, m := range []wire.Message{
		{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: 3, Key: []byte("k")},
		{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: []byte("data")},
		{Type: wire.TypeCopy, ID: 3, Context: 1, NewContext: 2},
		{Type: wire.TypeFinalize, ID: 4, Context: 1},
		{Type: wire.TypeVerify, ID: 5, Context: 2, Tag: make([]byte, 32)},
		{Type: wire.TypeOpen, ID: 6, Context: 3, Algorithm: 3, Key: []byte("slow-key")},
		{Type: wire.TypeUpdate, ID: 7, Context: 3, Data: []byte("fail")},
		{Type: wire.TypeCopy, ID: 8, Context: 3, NewContext: 4},
		{Type: wire.TypeClose, ID: 9, Context: 4},
		{Type: wire.TypeFinalize, ID: 10, Context: 3},
		{Type: wire.TypeMAC, ID: 11, Algorithm: 3, Key: []byte("k"), Data: []byte("x")},
		{Type: wire.TypeVerifyMAC, ID: 12, Algorithm: 3, Key: []byte("slow-key"), Tag: []byte{1}, Data: []byte("x")},
		{Type: wire.TypeListKeys, ID: 13},
		{Type: wire.TypeStatus, ID: 14},
		{Type: wire.TypeGenerateKey, ID: 15, Key: []byte("fuzz-gen"), Length: 16},
		{Type: wire.TypeImportKey, ID: 16, Key: []byte("fuzz-imp"), Data: []byte("k")},
		{Type: wire.TypeDeleteKey, ID: 17, Key: []byte("fuzz-gen")},
		{Type: wire.TypeImportWrapped, ID: 18, Key: []byte("w"), Wrapping: []byte("k"), Data: []byte("x")},
	} {
		b, _ := m.Append(nil)
		f.Add(true, b)
		all = append(all, b...)
	}
	f.Add(true, all)
	f.Add(false, all)
	f.Add(true, []byte{0, 0, 0, 0, 0, 0, 0, 5, 0x7e, 0, 0, 0, 1})
	f.Add(true, []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(false, []byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, handshake bool, input []byte) {
		s, c := pair(t)
		defer c.Close()
		srv.ServeConn(context.Background(), s)
		if handshake {
			input = append(hello(), input...)
		}
		go func() {
			c.Write(input)
			c.CloseWrite()
		}()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		// A server that closes with input unread resets the connection
		// (the kernel's way for a Unix socket): closed all the same.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("the server neither answered nor closed: %v", err)
		}
		// Others are still served.
		s2, c2 := pair(t)
		defer c2.Close()
		srv.ServeConn(context.Background(), s2)
		mac, _ := (&wire.Message{Type: wire.TypeMAC, ID: 1, Algorithm: 3, Key: []byte("k"), Data: []byte("ok")}).Append(hello())
		c2.Write(mac)
		c2.SetReadDeadline(time.Now().Add(10 * time.Second))
		fr := wire.NewFrameReader(bufioReader(c2), 1<<20)
		for range 2 {
			body, err := fr.Next()
			if err != nil {
				t.Fatalf("a well-behaved client after the input: %v", err)
			}
			var m wire.Message
			wire.Decode(body, &m)
			if m.Type == wire.TypeTag && !bytes.Equal(m.Tag, reference("ok")) {
				t.Fatalf("wrong tag after the input")
			}
		}
	})
}
