package socket_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
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

// sendAll writes msgs on a goroutine of its own while the caller reads
// the replies: a client that writes many requests before it reads gets
// no replies written past its socket's buffer, and no more requests
// read. wait reports the write's error.
func (r *raw) sendAll(msgs []wire.Message) (wait func()) {
	r.t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Append(b); err != nil {
			r.t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.nc.Write(b)
		done <- err
	}()
	return func() {
		r.t.Helper()
		if err := <-done; err != nil {
			r.t.Fatalf("writing requests: %v", err)
		}
	}
}

func tagOf(msg []byte) []byte {
	h := hmac.New(sha256.New, testSecret)
	h.Write(msg)
	return h.Sum(nil)
}

// The protocol frees a context's ID when FINALIZE ends it, so a client
// may COPY onto that ID at once, pipelined. The COPY used to run in its
// source's queue whenever that queue got to it, while the FINALIZE
// still waited in the target's queue behind a long UPDATE: the COPY
// failed ("already open"), or ran first and the FINALIZE finished the
// copy, returning a tag of the wrong input, and the requests sent for
// the copy found no context.
func TestCopyOntoFinishedIDWaitsForIt(t *testing.T) {
	a := startWithToken(t)
	long := bytes.Repeat([]byte("long input for the first context "), 8<<10)
	for _, source := range []string{"hk", "k"} {
		t.Run("source "+source, func(t *testing.T) {
			r := dialRaw(t, a.Path, true)
			for round := range 10 {
				id := uint32(100 * round)
				sha := uint8(providers.SHA256)
				for _, m := range []wire.Message{
					{Type: wire.TypeOpen, ID: id + 1, Context: 7, Algorithm: sha, Key: []byte("hk")},
					{Type: wire.TypeOpen, ID: id + 2, Context: 5, Algorithm: sha, Key: []byte(source)},
					{Type: wire.TypeUpdate, ID: id + 3, Context: 5, Data: []byte("source ")},
					{Type: wire.TypeUpdate, ID: id + 4, Context: 7, Data: long},
					{Type: wire.TypeFinalize, ID: id + 5, Context: 7},
					{Type: wire.TypeCopy, ID: id + 6, Context: 5, NewContext: 7},
					{Type: wire.TypeUpdate, ID: id + 7, Context: 7, Data: []byte("copy")},
					{Type: wire.TypeFinalize, ID: id + 8, Context: 7},
					{Type: wire.TypeFinalize, ID: id + 9, Context: 5},
				} {
					r.send(m)
				}
				got := r.replies(6)
				for _, want := range []struct {
					id  uint32
					typ wire.Type
					tag []byte
				}{
					{id + 1, wire.TypeOK, nil},
					{id + 2, wire.TypeOK, nil},
					{id + 5, wire.TypeTag, tagOf(long)},
					{id + 6, wire.TypeOK, nil},
					{id + 8, wire.TypeTag, tagOf([]byte("source copy"))},
					{id + 9, wire.TypeTag, tagOf([]byte("source "))},
				} {
					m, ok := got[want.id]
					if !ok {
						t.Fatalf("round %d: no reply to request %d; replies %v", round, want.id, got)
					}
					if m.Type != want.typ || !bytes.Equal(m.Tag, want.tag) {
						t.Fatalf("round %d: request %d got %s %x %q, want %s %x", round, want.id, m.Type, m.Tag, m.Data, want.typ, want.tag)
					}
				}
			}
		})
	}
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
	var msgs []wire.Message
	for i := range uint32(rounds) {
		msgs = append(msgs,
			wire.Message{Type: wire.TypeOpen, ID: 3*i + 1, Context: i, Algorithm: sha, Key: []byte("hk")},
			wire.Message{Type: wire.TypeFinalize, ID: 3*i + 2, Context: i},
			wire.Message{Type: wire.TypeOpen, ID: 3*i + 3, Context: i, Algorithm: sha, Key: []byte("hk@9")})
	}
	wait := r.sendAll(msgs)
	got := r.replies(3 * rounds)
	wait()
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

// A context the agent frees for idleness ends without a request of the
// client's, so its queue was never dropped: a client opening device
// contexts and leaving them to expire grew the connection's queues by
// one per context, for the connection's life. Queues now follow the
// contexts that are open.
func TestExpiredContextsLeaveNoQueues(t *testing.T) {
	tok := softhsm.Require(t, fmt.Sprintf("expire%d", tokenSeq.Add(1)))
	ctx := context.Background()
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	a := start(t, agenttest.Options{
		Providers: []providers.Provider{hsm},
		Limits:    agent.Limits{IdleContextTimeout: time.Second},
	})
	if _, err := hsm.ImportKey(ctx, "hk", testSecret); err != nil {
		t.Fatal(err)
	}
	r := dialRaw(t, a.Path, true)
	const opened = 1000 // past what the queues may hold for open contexts and requests in flight
	sha := uint8(providers.SHA256)
	var msgs []wire.Message
	for i := range uint32(opened) {
		msgs = append(msgs, wire.Message{Type: wire.TypeOpen, ID: i + 1, Context: i, Algorithm: sha, Key: []byte("hk")})
	}
	wait := r.sendAll(msgs)
	for i := range opened {
		if m := r.recv(); m.Type != wire.TypeOK {
			t.Fatalf("OPEN %d: %s %q", i, m.Type, m.Data)
		}
	}
	wait()
	for deadline := time.Now().Add(10 * time.Second); a.Agent.Status(ctx).Contexts != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d contexts left after the idle timeout", a.Agent.Status(ctx).Contexts)
		}
	}
	// The next context opened finds the others' queues and drops them.
	r.send(wire.Message{Type: wire.TypeOpen, ID: opened + 1, Context: opened, Algorithm: sha, Key: []byte("hk")})
	if m := r.recv(); m.Type != wire.TypeOK {
		t.Fatalf("OPEN after the expiry: %s %q", m.Type, m.Data)
	}
	if n := a.Server.ContextQueues(); n > 1 {
		t.Errorf("%d context queues for 1 open context, after %d expired", n, opened)
	}
	// An expired context's next request is still told why.
	r.send(wire.Message{Type: wire.TypeFinalize, ID: opened + 2, Context: 5})
	r.expectError(opened+2, providers.ErrLimit)
}

// TestPipelinedContextsMatchAModel sends random pipelined sequences of
// OPEN, UPDATE, COPY, FINALIZE and CLOSE over a few context IDs, on a
// token key and a software key of the same secret, and checks every
// reply against a model of the protocol: each ID's requests take effect
// in the order sent, an ID is free again once FINALIZE or CLOSE ends its
// context, and COPY onto a free ID makes a context there. Reusing IDs
// this way once made COPY and FINALIZE act on the wrong contexts.
func TestPipelinedContextsMatchAModel(t *testing.T) {
	a := startWithToken(t)
	type want struct {
		typ  wire.Type
		code wire.Code
		tag  []byte
	}
	type state struct{ data []byte }
	for seed := range int64(40) {
		rnd := rand.New(rand.NewPCG(uint64(seed), 1))
		r := dialRaw(t, a.Path, true)
		open := map[uint32]*state{}
		wants := map[uint32]want{}
		var msgs []wire.Message
		sha := uint8(providers.SHA256)
		for id := uint32(1); id <= 60; id++ {
			ctx := uint32(rnd.IntN(6))
			switch op := rnd.IntN(9); {
			case op < 2:
				key := []byte([]string{"hk", "k"}[rnd.IntN(2)])
				msgs = append(msgs, wire.Message{Type: wire.TypeOpen, ID: id, Context: ctx, Algorithm: sha, Key: key})
				if open[ctx] != nil {
					wants[id] = want{typ: wire.TypeError, code: wire.CodeOf(providers.ErrInvalidArgument)}
				} else {
					open[ctx] = &state{}
					wants[id] = want{typ: wire.TypeOK}
				}
			case op < 5:
				data := bytes.Repeat([]byte{byte(rnd.IntN(256))}, []int{1, 10, 3000, 70000}[rnd.IntN(4)])
				msgs = append(msgs, wire.Message{Type: wire.TypeUpdate, ID: id, Context: ctx, Data: data})
				if s := open[ctx]; s != nil {
					s.data = append(s.data, data...)
				} else {
					wants[id] = want{typ: wire.TypeError, code: wire.CodeOf(providers.ErrUnknownContext)}
				}
			case op < 7:
				dst := uint32(rnd.IntN(6))
				msgs = append(msgs, wire.Message{Type: wire.TypeCopy, ID: id, Context: ctx, NewContext: dst})
				switch {
				case open[ctx] == nil:
					wants[id] = want{typ: wire.TypeError, code: wire.CodeOf(providers.ErrUnknownContext)}
				case open[dst] != nil:
					wants[id] = want{typ: wire.TypeError, code: wire.CodeOf(providers.ErrInvalidArgument)}
				default:
					open[dst] = &state{data: bytes.Clone(open[ctx].data)}
					wants[id] = want{typ: wire.TypeOK}
				}
			case op < 8:
				msgs = append(msgs, wire.Message{Type: wire.TypeFinalize, ID: id, Context: ctx})
				if s := open[ctx]; s != nil {
					wants[id] = want{typ: wire.TypeTag, tag: tagOf(s.data)}
					delete(open, ctx)
				} else {
					wants[id] = want{typ: wire.TypeError, code: wire.CodeOf(providers.ErrUnknownContext)}
				}
			default:
				msgs = append(msgs, wire.Message{Type: wire.TypeClose, ID: id, Context: ctx})
				delete(open, ctx)
			}
		}
		wait := r.sendAll(msgs)
		got := r.replies(len(wants))
		wait()
		for id, w := range wants {
			m := got[id]
			if m.Type != w.typ || w.typ == wire.TypeError && m.Code != w.code || w.tag != nil && !bytes.Equal(m.Tag, w.tag) {
				t.Fatalf("seed %d, request %d (%s): got %s %s %q, want %s %s", seed, id, msgs[id-1].Type, m.Type, m.Code, m.Data, w.typ, w.code)
			}
		}
		r.nc.Close()
	}
}
