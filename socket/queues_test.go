package socket_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// A second OPEN of a device context's ID fails ("already open"), and the
// context it names must keep its queue: its later requests still run off
// the reader. Before, the failed OPEN dropped the queue, the context's
// FINALIZE ran on the reader (inside the caller's turn at the CPUs) and
// waited there for the device, and a MAC sent after it on the same
// connection waited too.
func TestFailedReopenKeepsTheContextsQueue(t *testing.T) {
	slow := &agenttest.SlowProvider{Secret: testSecret, Delay: 2 * time.Second}
	a := start(t, agenttest.Options{Providers: []providers.Provider{slow}})
	r := dialRaw(t, a.Path, true)
	open := wire.Message{Type: wire.TypeOpen, ID: 1, Context: 5, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key")}
	r.send(open)
	if m := r.recv(); m.Type != wire.TypeOK || m.ID != 1 {
		t.Fatalf("OPEN: %s id=%d %q", m.Type, m.ID, m.Data)
	}
	open.ID = 2
	r.send(open)
	r.expectError(2, providers.ErrInvalidArgument)
	r.mac(3, "warm") // the software key, resolved: inline from now on
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 4, Context: 5})
	r.send(wire.Message{Type: wire.TypeMAC, ID: 5, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte("behind")})
	if m := r.recv(); m.ID != 5 {
		t.Fatalf("first reply %s id=%d: the MAC waited behind the device context's FINALIZE, run on the reader", m.Type, m.ID)
	}
	if m := r.recv(); m.ID != 4 || m.Type != wire.TypeTag {
		t.Fatalf("FINALIZE: %s id=%d %q", m.Type, m.ID, m.Data)
	}
}

// slowListing is a fake agent whose LIST_KEYS waits for release and whose
// GENERATE_KEY answers at once.
type slowListing struct {
	*fakeAgent
	release chan struct{}
}

func (s slowListing) ListKeys(context.Context, agent.Peer) ([]providers.KeyInfo, error) {
	<-s.release
	return nil, nil
}

func (slowListing) GenerateKey(context.Context, agent.Peer, string, string, int) (providers.KeyInfo, error) {
	return providers.KeyInfo{}, providers.ErrNotSupported
}

// A connection's management requests run one at a time, and each reply
// goes out when its request is done, not when the queue has drained: a
// GENERATE_KEY answered at once reaches the client while the LIST_KEYS
// sent after it still waits.
func TestManagementReplyNotHeldBehindLaterRequests(t *testing.T) {
	f := slowListing{&fakeAgent{}, make(chan struct{})}
	defer close(f.release)
	r := dialRaw(t, serveListing(t, f), true)
	r.send(wire.Message{Type: wire.TypeGenerateKey, ID: 1, Provider: []byte("p"), Key: []byte("n"), Length: 32})
	r.send(wire.Message{Type: wire.TypeListKeys, ID: 2})
	r.expectError(1, providers.ErrNotSupported) // recv gives up after 5 s
}

// serveListing serves a at the default limits on a socket of the test's
// own and returns its path.
func serveListing(t *testing.T, a socket.Agent[*fakeSession]) string {
	t.Helper()
	path := filepath.Join(agenttest.SocketDir(t), "fake.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := socket.NewServer(a, socket.Limits{}, nil)
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	return path
}

// refusingListing is slowListing for a peer that may not manage keys.
type refusingListing struct{ slowListing }

func (refusingListing) MayManage(agent.Peer) bool { return false }

func (refusingListing) GenerateKey(context.Context, agent.Peer, string, string, int) (providers.KeyInfo, error) {
	return providers.KeyInfo{}, providers.ErrPermissionDenied
}

// A key-management request from a peer that may not manage keys is
// answered by the reader, not queued: here while the connection's
// LIST_KEYS, sent before it, still waits. A flood of refused requests
// so costs what a flood of software one-shots does.
func TestRefusedManagementAnsweredAtOnce(t *testing.T) {
	f := refusingListing{slowListing{&fakeAgent{}, make(chan struct{})}}
	defer close(f.release)
	r := dialRaw(t, serveListing(t, f), true)
	r.send(wire.Message{Type: wire.TypeListKeys, ID: 1})
	r.send(wire.Message{Type: wire.TypeGenerateKey, ID: 2, Provider: []byte("p"), Key: []byte("n"), Length: 32})
	r.expectError(2, providers.ErrPermissionDenied) // recv gives up after 5 s
}
