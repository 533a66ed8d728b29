package socket_test

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// TestHelloDeadline: a connection that never says HELLO, or says part of
// it, is told so and closed once the hello timeout passes.
func TestHelloDeadline(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{HelloTimeout: 200 * time.Millisecond})
	silent := dialRaw(t, a.Path, false)
	partial := dialRaw(t, a.Path, false)
	hello, _ := (&wire.Message{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1}).Append(nil)
	partial.sendRaw(hello[:len(hello)-1])
	for _, r := range []*raw{silent, partial} {
		m := r.expectError(0, wire.ErrVersion)
		if !strings.Contains(string(m.Data), "no HELLO within 200ms") {
			t.Errorf("message %q", m.Data)
		}
		r.expectClosed()
	}
	dialRaw(t, a.Path, true).mac(1, "a prompt client is served")
}

// TestFrameBeforeHelloCapped: before HELLO, a frame larger than a HELLO
// is refused when announced, without the agent reading or holding its
// body.
func TestFrameBeforeHelloCapped(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{})
	r := dialRaw(t, a.Path, false)
	r.sendRaw(binary.BigEndian.AppendUint32(nil, 1<<20))
	r.expectError(0, wire.ErrVersion)
	r.expectClosed()
	r = dialRaw(t, a.Path, false)
	r.sendRaw(binary.BigEndian.AppendUint32(nil, wire.MaxHelloFrame+1))
	r.expectError(0, wire.ErrVersion)
	r.expectClosed()
}

// TestIdleConnectionClosed: a connection with no context open and no
// request is closed after the idle timeout; one with a context open is
// not, however long it waits.
func TestIdleConnectionClosed(t *testing.T) {
	const idle = 200 * time.Millisecond
	a := startFake(t, &fakeAgent{}, socket.Limits{IdleTimeout: idle})
	withContext := dialRaw(t, a.Path, true)
	withContext.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	if m := withContext.recv(); m.Type != wire.TypeOK {
		t.Fatalf("OPEN: %s %q", m.Type, m.Data)
	}
	bare := dialRaw(t, a.Path, true)
	bare.mac(1, "served, then idle")
	start := time.Now()
	bare.expectClosed()
	if waited := time.Since(start); waited < idle/2 {
		t.Errorf("closed after %s, before the idle timeout of %s", waited, idle)
	}
	time.Sleep(3 * idle)
	withContext.send(wire.Message{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: []byte("still here")})
	withContext.send(wire.Message{Type: wire.TypeFinalize, ID: 3, Context: 1})
	if m := withContext.recv(); m.Type != wire.TypeTag || m.ID != 3 {
		t.Fatalf("a connection with a context open was cut: %s %q", m.Type, m.Data)
	}
	// Its context finished, it is idle too now.
	withContext.expectClosed()
}

// TestHalfSmallFrameClosed: half of a small frame, the rest never sent,
// ends the connection at the idle timeout, even with a context open,
// as half of a large one does; the replies to the requests before it are
// sent while the agent waits for the rest.
func TestHalfSmallFrameClosed(t *testing.T) {
	const idle = 200 * time.Millisecond
	a := startFake(t, &fakeAgent{}, socket.Limits{IdleTimeout: idle})
	r := dialRaw(t, a.Path, true)
	b, _ := (&wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("k")}).Append(nil)
	half, _ := (&wire.Message{Type: wire.TypeMAC, ID: 2, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte("never all")}).Append(nil)
	r.sendRaw(append(b, half[:len(half)/2]...))
	if m := r.recv(); m.Type != wire.TypeOK || m.ID != 1 {
		t.Fatalf("OPEN before the half frame: %s %q", m.Type, m.Data)
	}
	start := time.Now()
	r.expectClosed()
	if waited := time.Since(start); waited < idle/2 {
		t.Errorf("closed after %s, before the idle timeout of %s", waited, idle)
	}
}

// TestIdleCloseClients: every client in the repository, idle past the
// agent's idle timeout, finds its connection closed and its next request
// served on a new one.
func TestIdleCloseClients(t *testing.T) {
	const idle = 150 * time.Millisecond
	a := startFake(t, &fakeAgent{}, socket.Limits{IdleTimeout: idle})
	want := reference("after idle")
	ctx := context.Background()
	t.Run("Go", func(t *testing.T) {
		c, err := client.Dial(ctx, a.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 3 {
			tag, err := c.MAC(ctx, "k", client.SHA256, []byte("after idle"))
			if err != nil || string(tag) != string(want) {
				t.Fatalf("MAC %d: %x, %v", i, tag, err)
			}
			waitClosed(t, a.Server)
		}
	})
	root, _ := filepath.Abs("..")
	scripts := map[string][]string{
		"Python": {"python3", "-c", `
import sys, time
sys.path.insert(0, sys.argv[1] + "/clients/python")
from hmac_agent import Agent
a = Agent(sys.argv[2])
for i in range(3):
    print(a.mac("k", "sha256", b"after idle").hex())
    time.sleep(float(sys.argv[3]))
`},
		"Node": {"node", "-e", `
const { Agent } = require(process.argv[1] + '/clients/node');
(async () => {
  const a = new Agent(process.argv[2]);
  for (let i = 0; i < 3; i++) {
    console.log((await a.mac('k', 'sha256', Buffer.from('after idle'))).toString('hex'));
    await new Promise((r) => setTimeout(r, Number(process.argv[3]) * 1000));
  }
  a.close();
})().catch((e) => { console.error(e); process.exit(1); });
`},
	}
	for name, cmd := range scripts {
		t.Run(name, func(t *testing.T) {
			if _, err := exec.LookPath(cmd[0]); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("CI is set and %s is missing", cmd[0])
				}
				t.Skipf("%s is not installed", cmd[0])
			}
			args := append(cmd[1:], root, a.Path, strconv.FormatFloat((4*idle).Seconds(), 'f', -1, 64))
			out, err := exec.Command(cmd[0], args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			lines := strings.Fields(string(out))
			if len(lines) != 3 {
				t.Fatalf("output %q", out)
			}
			for i, l := range lines {
				if l != hex.EncodeToString(want) {
					t.Errorf("MAC %d after idle: %s", i, l)
				}
			}
		})
	}
}

// waitClosed waits until the agent has closed every connection.
func waitClosed(t *testing.T, srv *socket.Server) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); srv.Connections() > 0; {
		if time.Now().After(end) {
			t.Fatalf("%d connections still open past the idle timeout", srv.Connections())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectionsPerUID: one uid at its connection limit is refused with
// limit; the connections it has are served.
func TestConnectionsPerUID(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{MaxConnectionsPerUID: 3})
	var held []*raw
	for range 3 {
		held = append(held, dialRaw(t, a.Path, true))
	}
	r := dialRaw(t, a.Path, false)
	m := r.expectError(0, providers.ErrLimit)
	if !strings.Contains(string(m.Data), "too many connections for uid") {
		t.Errorf("message %q", m.Data)
	}
	r.expectClosed()
	for i, h := range held {
		h.mac(uint32(i+1), "still served")
	}
	held[0].nc.Close()
	for end := time.Now().Add(5 * time.Second); a.Server.Connections() > 2 && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	dialRaw(t, a.Path, true).mac(1, "a place came free")
}

// TestContextsPerUID: one uid's contexts over several connections are
// bounded by max_contexts_per_uid, below the agent's max_contexts.
func TestContextsPerUID(t *testing.T) {
	a := start(t, agenttest.Options{Limits: agent.Limits{MaxContextsPerUID: 5, MaxContexts: 100}})
	opened := 0
	var err error
	for i := 0; err == nil && i < 10; i++ {
		r := dialRaw(t, a.Path, true)
		for id := uint32(1); id <= 3; id++ {
			r.send(wire.Message{Type: wire.TypeOpen, ID: id, Context: id, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
			m := r.recv()
			if m.Type != wire.TypeOK {
				err = &wire.RemoteError{Code: m.Code, Message: string(m.Data)}
				break
			}
			opened++
		}
	}
	if opened != 5 || !errors.Is(err, providers.ErrLimit) || !strings.Contains(err.Error(), "too many open contexts for uid") {
		t.Errorf("opened %d contexts, then %v; want 5 then the per-uid limit", opened, err)
	}
}

// TestUnreadRepliesEndTheConnection: a peer that sends requests and takes
// no reply for the reply timeout loses its connection, and with it what
// the agent held for it; a blocked write had no deadline, and such
// connections stayed for as long as their peers kept them open.
func TestUnreadRepliesEndTheConnection(t *testing.T) {
	a := start(t, agenttest.Options{SocketLimits: socket.Limits{ReplyTimeout: 300 * time.Millisecond}})
	deaf := dialRaw(t, a.Path, true)
	go deaf.nc.Write(pipelinedMACs(20000))
	for end := time.Now().Add(10 * time.Second); a.Server.Connections() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d connections open 10 s after a peer stopped reading, with a reply timeout of 300ms", a.Server.Connections())
		}
	}
	dialRaw(t, a.Path, true).mac(1, "a client that reads is served")
}

// pipelinedMACs is n one-shot MACs on key "k", ready to send at once.
// Each reply is longer than its request, so the replies to what a reader
// takes in at once outgrow its write buffer, which then waits for the
// peer in the middle of the requests, not only when they run out.
func pipelinedMACs(n int) []byte {
	req, _ := (&wire.Message{Type: wire.TypeMAC, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte("x")}).Append(nil)
	buf := make([]byte, 0, n*len(req))
	for i := range n {
		binary.BigEndian.PutUint32(req[5:9], uint32(i+1))
		buf = append(buf, req...)
	}
	return buf
}
