package client_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// closingProxy stands between clients and a real agent, passing frames
// both ways, except that on a connection armed when it was accepted it
// closes the connection, without an answer, once the nth request after
// HELLO arrives: what a client sees when the agent closes an idle
// connection in the moment a request reaches it. With unread the
// request is left unread, as the agent leaves it (the client gets a
// reset); otherwise it is read first (the client gets end of stream).
type closingProxy struct {
	path, upstream string
	unread         bool

	mu    sync.Mutex
	armed int // the request to close at on the next connection; 0 for none
	seen  []wire.Type
}

func startClosingProxy(t *testing.T, upstream string, unread bool) *closingProxy {
	t.Helper()
	p := &closingProxy{path: filepath.Join(agenttest.SocketDir(t), "proxy.sock"), upstream: upstream, unread: unread}
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			at := p.armed
			p.armed = 0
			p.mu.Unlock()
			wg.Go(func() { p.serve(nc.(*net.UnixConn), at) })
		}
	})
	return p
}

// arm makes the next connection close at its nth request after HELLO.
func (p *closingProxy) arm(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed = n
}

// count is how many requests of type t arrived, closed on or passed on.
func (p *closingProxy) count(t wire.Type) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.seen {
		if s == t {
			n++
		}
	}
	return n
}

func (p *closingProxy) serve(down *net.UnixConn, closeAt int) {
	defer down.Close()
	up, err := net.Dial("unix", p.upstream)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(down, up)
		down.CloseWrite()
	}()
	fr := wire.NewFrameReader(bufio.NewReader(down), 1<<24)
	hello := false
	for n := 0; ; {
		if hello && n+1 == closeAt && p.unread && fr.Buffered() == 0 {
			if t, ok := peekType(down); ok {
				p.note(t)
			}
			return
		}
		body, err := fr.Next()
		if err != nil {
			return
		}
		t := wire.Type(body[0])
		if t == wire.TypeHello {
			hello = true
		} else {
			n++
			p.note(t)
			if n == closeAt {
				return
			}
		}
		if _, err := up.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)); err != nil {
			return
		}
	}
}

func (p *closingProxy) note(t wire.Type) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, t)
}

// peekType waits for a frame's header and returns its type, leaving the
// bytes unread in the socket.
func peekType(c *net.UnixConn) (wire.Type, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var hdr [wire.HeaderSize]byte
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), hdr[:], syscall.MSG_PEEK)
		return rerr != syscall.EAGAIN
	})
	if err != nil || rerr != nil || n < 5 {
		return 0, false
	}
	return wire.Type(hdr[4]), true
}

// TestUnansweredRequestSentAgain: a request the agent's side closed the
// connection on without answering is sent once more on a new connection
// if it starts afresh (MAC, VERIFY_MAC, OPEN, a key listing, STATUS),
// and the caller gets its answer; a key import, generation, rotation,
// retirement or deletion, and a request on a context, are never sent
// again: the caller is told the connection was lost.
func TestUnansweredRequestSentAgain(t *testing.T) {
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{})
	secret := []byte("unanswered")
	if _, err := a.Soft.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("m"))
	want := mac.Sum(nil)

	for _, unread := range []bool{true, false} {
		name := map[bool]string{true: "reset", false: "end of stream"}[unread]
		t.Run(name, func(t *testing.T) {
			p := startClosingProxy(t, a.Path, unread)
			// dial connects afresh through p, which closes the new
			// connection at its nth request after HELLO.
			dial := func(n int) *client.Client {
				t.Helper()
				p.arm(n)
				c, err := client.Dial(ctx, p.path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			afresh := []struct {
				typ wire.Type
				run func(c *client.Client) error
			}{
				{wire.TypeMAC, func(c *client.Client) error {
					tag, err := c.MAC(ctx, "k", client.SHA256, []byte("m"))
					if err == nil && !bytes.Equal(tag, want) {
						err = errors.New("wrong tag")
					}
					return err
				}},
				{wire.TypeVerifyMAC, func(c *client.Client) error {
					return c.VerifyMAC(ctx, "k", client.SHA256, []byte("m"), want)
				}},
				{wire.TypeOpen, func(c *client.Client) error {
					h, err := c.New(ctx, "k", client.SHA256)
					if err != nil {
						return err
					}
					h.Update([]byte("m"))
					return h.Verify(ctx, want)
				}},
				{wire.TypeListKeys, func(c *client.Client) error {
					keys, err := c.Keys(ctx)
					if err == nil && len(keys) != 1 {
						err = errors.New("wrong key list")
					}
					return err
				}},
				{wire.TypeStatus, func(c *client.Client) error { _, err := c.Status(ctx); return err }},
			}
			for _, tc := range afresh {
				if err := tc.run(dial(1)); err != nil {
					t.Errorf("%s closed unanswered: %v", tc.typ, err)
				}
				if n := p.count(tc.typ); n != 2 {
					t.Errorf("%s closed unanswered was sent %d times, want twice", tc.typ, n)
				}
			}

			once := []struct {
				typ wire.Type
				run func(c *client.Client) error
			}{
				{wire.TypeGenerateKey, func(c *client.Client) error { _, err := c.GenerateKey(ctx, "soft", "g", 32); return err }},
				{wire.TypeImportKey, func(c *client.Client) error { _, err := c.ImportKey(ctx, "soft", "i", []byte("secret")); return err }},
				{wire.TypeRotateKey, func(c *client.Client) error { _, err := c.RotateKey(ctx, "soft", "k", nil, 32); return err }},
				{wire.TypeRetireVersion, func(c *client.Client) error { return c.RetireVersion(ctx, "soft", "k", 1, true) }},
				{wire.TypeDeleteKey, func(c *client.Client) error { return c.DeleteKey(ctx, "soft", "k") }},
			}
			for _, tc := range once {
				if err := tc.run(dial(1)); !errors.Is(err, client.ErrConnectionLost) {
					t.Errorf("%s closed unanswered: %v, want a lost connection", tc.typ, err)
				}
				if n := p.count(tc.typ); n != 1 {
					t.Errorf("%s closed unanswered was sent %d times, want once", tc.typ, n)
				}
			}

			// FINALIZE, the second request, on a context opened by the first.
			c := dial(2)
			h, err := c.New(ctx, "k", client.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.Finalize(ctx); !errors.Is(err, client.ErrConnectionLost) && !errors.Is(err, client.ErrContextLost) {
				t.Errorf("FINALIZE closed unanswered: %v, want a lost connection", err)
			}
			if n := p.count(wire.TypeFinalize); n != 1 {
				t.Errorf("FINALIZE closed unanswered was sent %d times, want once", n)
			}

			// Nothing was changed by the requests not sent again.
			keys, err := c.Keys(ctx)
			if err != nil || len(keys) != 1 || keys[0].Name != "k" {
				t.Fatalf("keys after: %+v, %v", keys, err)
			}
			tag, err := c.MAC(ctx, "k", client.SHA256, []byte("m"))
			if err != nil || !bytes.Equal(tag, want) {
				t.Fatalf("MAC after: %x, %v", tag, err)
			}
		})
	}
}
