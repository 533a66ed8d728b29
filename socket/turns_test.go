package socket_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// TestQueuedSoftwareContextTakesTurns: a context opened on a software
// key the agent had not found yet opens off the reader, on a queue of its
// own, since finding a key may wait on a device. Its work on the CPUs
// must still wait for its caller's turn, as the reader's own does: its
// requests (UPDATE, COPY, FINALIZE, and those on the copy), whether they
// were queued behind the OPEN or sent after its reply, are not answered
// while every turn is taken, and are once one is given up.
func TestQueuedSoftwareContextTakesTurns(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		name := "AfterOpen"
		if pipelined {
			name = "QueuedBehindOpen"
		}
		t.Run(name, func(t *testing.T) {
			a := start(t, agenttest.Options{})
			key := []byte("not-yet-found")
			if _, err := a.Soft.ImportKey(context.Background(), string(key), testSecret); err != nil {
				t.Fatal(err)
			}
			r := dialRaw(t, a.Path, true)
			if a.Agent.Immediate(key) {
				t.Fatal("the agent knows the key already: its OPEN would run on the reader")
			}
			open := wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: key}
			if !pipelined {
				r.send(open)
				if m := r.recv(); m.Type != wire.TypeOK {
					t.Fatalf("OPEN: %s %q", m.Type, m.Data)
				}
			}
			taken, release := socket.FillTurns(a.Server)
			defer release()
			if pipelined {
				r.send(open)
			}
			r.send(wire.Message{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: []byte("in turn")})
			r.send(wire.Message{Type: wire.TypeCopy, ID: 3, Context: 1, NewContext: 2})
			r.send(wire.Message{Type: wire.TypeUpdate, ID: 4, Context: 2, Data: []byte(", copied")})
			r.send(wire.Message{Type: wire.TypeFinalize, ID: 5, Context: 2})
			r.send(wire.Message{Type: wire.TypeFinalize, ID: 6, Context: 1})
			// Until a request takes a turn given up, nothing is answered
			// but the OPEN, which is not work in a turn: finding the key
			// may wait. (Its reply may wait in the buffer for the
			// requests behind it.)
			opened := !pipelined
			for deadline := time.Now().Add(10 * time.Second); ; {
				if m, ok := r.poll(time.Millisecond); ok {
					if !opened && m.Type == wire.TypeOK && m.ID == 1 {
						opened = true
						continue
					}
					t.Fatalf("%s id=%d answered while every turn was taken: the context's work ran outside the turns", m.Type, m.ID)
				}
				if taken() {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no request of the context waited for a turn")
				}
			}
			release()
			want := map[uint32]wire.Message{
				3: {Type: wire.TypeOK},
				5: {Type: wire.TypeTag, Tag: reference("in turn, copied")},
				6: {Type: wire.TypeTag, Tag: reference("in turn")},
			}
			if !opened {
				want[1] = wire.Message{Type: wire.TypeOK}
			}
			for range len(want) {
				m := r.recv()
				w, ok := want[m.ID]
				if !ok || m.Type != w.Type || !bytes.Equal(m.Tag, w.Tag) {
					t.Fatalf("reply %s id=%d %x %q, want %s %x", m.Type, m.ID, m.Tag, m.Data, w.Type, w.Tag)
				}
				delete(want, m.ID)
			}
		})
	}
}

// poll reads a reply if one comes within d.
func (r *raw) poll(d time.Duration) (wire.Message, bool) {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(d))
	body, err := r.fr.Next()
	if errors.Is(err, os.ErrDeadlineExceeded) && !r.fr.MidFrame() {
		return wire.Message{}, false
	}
	if err != nil {
		r.t.Fatalf("reading reply: %v", err)
	}
	var m wire.Message
	if err := wire.Decode(bytes.Clone(body), &m); err != nil {
		r.t.Fatalf("decoding reply: %v", err)
	}
	return m, true
}
