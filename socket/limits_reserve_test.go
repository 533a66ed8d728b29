package socket_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
)

// TestConnectionsReservedForLightUIDs: two uids, each in a process of
// its own opening connections as fast as it can (the hostile "connections"
// attack), take all they may of 16 connections at 8 per uid: without a
// reserve they take all 16 and lock everyone else out. With it they take
// the 14 of the shared part, and root, holding none, is still taken and
// served.
func TestConnectionsReservedForLightUIDs(t *testing.T) {
	agenttest.RequireRoot(t, "to open connections as other uids")
	const maxConns, perUID = 16, 8
	a := startFake(t, &fakeAgent{}, socket.Limits{
		MaxConnections: maxConns, MaxConnectionsPerUID: perUID,
		HelloTimeout: time.Minute, // the heavy uids' connections stay
	})
	os.Chmod(filepath.Dir(a.Path), 0o711) // other uids may connect
	os.Chmod(a.Path, 0o666)
	bin := attackerBinary(t)
	shared := maxConns - maxConns/8
	for _, uid := range []uint32{attackerUID, attackerUID - 1} {
		startChild(t, &syscall.Credential{Uid: uid, Gid: uid}, bin, "hostile-attack", "attacking",
			"HOSTILE_SOCK="+a.Path, "HOSTILE_ATTACK=connections")
	}
	// The server takes connections in the order they came: once it has
	// taken root's, it has judged every one of the heavy uids'.
	r := dialRaw(t, a.Path, true)
	r.mac(1, "a light uid is served")
	if got := a.Server.Connections(); got != shared+1 {
		t.Errorf("%d connections open, want the heavy uids' %d of the shared part and root's one", got, shared)
	}
	// Root is light until it holds 4: its next connection is taken too,
	// and one past max_connections is refused as before.
	dialRaw(t, a.Path, true).mac(2, "a second one")
	m := dialRaw(t, a.Path, false).expectError(0, providers.ErrLimit)
	if !strings.Contains(string(m.Data), "too many connections (at most 16)") {
		t.Errorf("past max_connections: %q", m.Data)
	}
}

// TestConnectionReserveRefusesHeavyUID: one uid may hold every
// connection its own limit allows but not the last eighth of
// max_connections, kept for uids holding fewer than 4; what it holds is
// served as before.
func TestConnectionReserveRefusesHeavyUID(t *testing.T) {
	const maxConns = 16
	a := startFake(t, &fakeAgent{}, socket.Limits{MaxConnections: maxConns, MaxConnectionsPerUID: maxConns})
	first := dialRaw(t, a.Path, true)
	for range maxConns - maxConns/8 - 1 {
		dialRaw(t, a.Path, false)
	}
	r := dialRaw(t, a.Path, false)
	m := r.expectError(0, providers.ErrLimit)
	if want := "too many connections (at most 16, the last 2 only for uids holding fewer than 4)"; string(m.Data) != want {
		t.Errorf("a heavy uid's connection into the reserve: %q, want %q", m.Data, want)
	}
	r.expectClosed()
	first.mac(1, "the heavy uid's connections are served")
}
