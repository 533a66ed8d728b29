package socket_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// startWithToken starts an agent with the software key "k" and a key
// "hk" of the same secret in a real SoftHSM2 token, whose contexts run
// in queues off the reader.
func startWithToken(t *testing.T) *agenttest.Agent {
	t.Helper()
	tok := softhsm.Require(t, fmt.Sprintf("reuse%d", tokenSeq.Add(1)))
	ctx := context.Background()
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	a := start(t, agenttest.Options{Providers: []providers.Provider{hsm}})
	if _, err := hsm.ImportKey(ctx, "hk", testSecret); err != nil {
		t.Fatal(err)
	}
	return a
}

// replies reads n replies and returns them by request ID.
func (r *raw) replies(n int) map[uint32]wire.Message {
	r.t.Helper()
	got := make(map[uint32]wire.Message, n)
	for range n {
		m := r.recv()
		if _, dup := got[m.ID]; dup {
			r.t.Fatalf("two replies to request %d", m.ID)
		}
		got[m.ID] = m
	}
	return got
}

func tagOf(msg []byte) []byte {
	h := hmac.New(sha256.New, testSecret)
	h.Write(msg)
	return h.Sum(nil)
}

// A context queue lives as long as its context. An OPEN that fails on
// the ID of a context already finished, its queue not yet drained, used
// to leave the queue behind for the connection's life: a client cycling
// through IDs grew the agent's memory without bound, outside every
// budget.
func TestFailedOpenAfterFinishDropsTheQueue(t *testing.T) {
	a := startWithToken(t)
	r := dialRaw(t, a.Path, true)
	const rounds = 200
	sha := uint8(providers.SHA256)
	for i := range uint32(rounds) {
		r.send(wire.Message{Type: wire.TypeOpen, ID: 3*i + 1, Context: i, Algorithm: sha, Key: []byte("hk")})
		r.send(wire.Message{Type: wire.TypeFinalize, ID: 3*i + 2, Context: i})
		r.send(wire.Message{Type: wire.TypeOpen, ID: 3*i + 3, Context: i, Algorithm: sha, Key: []byte("hk@9")})
	}
	got := r.replies(3 * rounds)
	for i := range uint32(rounds) {
		if m := got[3*i+3]; m.Type != wire.TypeError || m.Code != wire.CodeOf(providers.ErrKeyNotFound) {
			t.Fatalf("OPEN of hk@9: %s %s %q", m.Type, m.Code, m.Data)
		}
	}
	r.mac(3*rounds+1, "still served")
	// A queue goes just after its last reply is written; give the
	// workers time to get there.
	for deadline := time.Now().Add(5 * time.Second); a.Server.ContextQueues() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d context queues left for %d contexts, all finished", a.Server.ContextQueues(), rounds)
		}
	}
}
