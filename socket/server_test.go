package socket_test

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
	"strings"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

var testSecret = []byte("socket-test-key-0123456789abcdef")

func reference(msg string) []byte {
	h := hmac.New(sha256.New, testSecret)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// raw is a client that speaks frames by hand, to send what a well-behaved
// client never would.
type raw struct {
	t  *testing.T
	nc net.Conn
	fr *wire.FrameReader
}

func dialRaw(t *testing.T, path string, hello bool) *raw {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := &raw{t: t, nc: nc, fr: wire.NewFrameReader(bufio.NewReader(nc), 1<<24)}
	if hello {
		r.send(wire.Message{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1})
		if m := r.recv(); m.Type != wire.TypeHelloReply || m.Version != 1 {
			t.Fatalf("handshake reply %+v", m)
		}
	}
	return r
}

func (r *raw) send(m wire.Message) {
	r.t.Helper()
	b, err := m.Append(nil)
	if err != nil {
		r.t.Fatal(err)
	}
	r.sendRaw(b)
}

func (r *raw) sendRaw(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) recv() wire.Message {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	body, err := r.fr.Next()
	if err != nil {
		r.t.Fatalf("reading reply: %v", err)
	}
	var m wire.Message
	if err := wire.Decode(bytes.Clone(body), &m); err != nil {
		r.t.Fatalf("decoding reply: %v", err)
	}
	return m
}

// expectError reads a reply and checks it is an ERROR for id wrapping want.
func (r *raw) expectError(id uint32, want error) wire.Message {
	r.t.Helper()
	m := r.recv()
	if m.Type != wire.TypeError || m.ID != id || !errors.Is(&wire.RemoteError{Code: m.Code}, want) {
		r.t.Fatalf("got %s id=%d code=%s %q, want ERROR id=%d %v", m.Type, m.ID, m.Code, m.Data, id, want)
	}
	return m
}

func (r *raw) expectClosed() {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.fr.Next(); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		r.t.Fatalf("connection still open: %v", err)
	}
}

// mac sends a one-shot MAC and checks the tag: the agent still serves.
func (r *raw) mac(id uint32, msg string) {
	r.t.Helper()
	r.send(wire.Message{Type: wire.TypeMAC, ID: id, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte(msg)})
	m := r.recv()
	if m.Type != wire.TypeTag || m.ID != id || !bytes.Equal(m.Tag, reference(msg)) {
		r.t.Fatalf("MAC reply %s id=%d %x %q", m.Type, m.ID, m.Tag, m.Data)
	}
}

func start(t *testing.T, opts agenttest.Options) *agenttest.Agent {
	t.Helper()
	a := agenttest.Start(t, opts)
	if _, err := a.Soft.ImportKey(context.Background(), "k", testSecret); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestHandshake(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{})
	t.Run("Good", func(t *testing.T) {
		r := dialRaw(t, a.Path, true)
		r.mac(1, "hi")
	})
	t.Run("NoCommonVersion", func(t *testing.T) {
		r := dialRaw(t, a.Path, false)
		r.send(wire.Message{Type: wire.TypeHello, ID: 7, MinVersion: wire.Version + 1, MaxVersion: 9})
		r.expectError(7, wire.ErrVersion)
		r.expectClosed()
	})
	t.Run("NotHelloFirst", func(t *testing.T) {
		r := dialRaw(t, a.Path, false)
		r.send(wire.Message{Type: wire.TypeStatus, ID: 3})
		r.expectError(3, wire.ErrVersion)
		r.expectClosed()
	})
	t.Run("BadMagic", func(t *testing.T) {
		r := dialRaw(t, a.Path, false)
		r.sendRaw([]byte{0, 0, 0, 13, 1, 0, 0, 0, 1, 'S', 'S', 'H', '2', 0, 1, 0, 1})
		r.expectError(1, wire.ErrVersion)
		r.expectClosed()
	})
	// Requests sent with HELLO in one write, small ones and ones larger
	// than the buffer a connection has until HELLO, arrive whole and in
	// order across the buffer's growth.
	t.Run("RequestsWithHello", func(t *testing.T) {
		r := dialRaw(t, a.Path, false)
		var b []byte
		b, _ = (&wire.Message{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1}).Append(b)
		var msgs []string
		for i := range 40 {
			msg := strings.Repeat(string(rune('a'+i%26)), 1+i*i*25)
			msgs = append(msgs, msg)
			b, _ = (&wire.Message{Type: wire.TypeMAC, ID: uint32(i + 1), Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte(msg)}).Append(b)
		}
		r.sendRaw(b)
		if m := r.recv(); m.Type != wire.TypeHelloReply {
			t.Fatalf("handshake reply %+v", m)
		}
		for i, msg := range msgs {
			m := r.recv()
			if m.Type != wire.TypeTag || m.ID != uint32(i+1) || !bytes.Equal(m.Tag, reference(msg)) {
				t.Fatalf("MAC %d of %d bytes: reply %s id=%d %q", i+1, len(msg), m.Type, m.ID, m.Data)
			}
		}
		r.mac(100, "after")
	})
}

// TestMalformedFrames sends what a broken or hostile client might, one
// after another on one connection, and checks each gets its error and the
// connection keeps serving.
func TestMalformedFrames(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{})
	r := dialRaw(t, a.Path, true)
	frame := func(typ wire.Type, id uint32, payload ...byte) []byte {
		b := wire.AppendHeader(nil, typ, id, len(payload))
		return append(b, payload...)
	}
	cases := []struct {
		name  string
		frame []byte
		id    uint32
		want  error
	}{
		{"zero length", []byte{0, 0, 0, 0}, 0, wire.ErrBadRequest},
		{"body shorter than header", []byte{0, 0, 0, 3, 0x13, 0, 0}, 0, wire.ErrBadRequest},
		{"unknown type", frame(0x7e, 11), 11, wire.ErrUnknownMessage},
		{"reply type as request", frame(wire.TypeTag, 12, 1, 2), 12, wire.ErrUnknownMessage},
		{"truncated OPEN", frame(wire.TypeOpen, 13, 0, 0, 0, 1, 3, 10, 'k'), 13, wire.ErrBadRequest},
		{"OPEN with trailing bytes", frame(wire.TypeOpen, 14, 0, 0, 0, 1, 3, 1, 'k', 0), 14, wire.ErrBadRequest},
		{"truncated FINALIZE", frame(wire.TypeFinalize, 15, 0, 0), 15, wire.ErrBadRequest},
		{"unknown algorithm", frame(wire.TypeMAC, 16, 99, 1, 'k'), 16, providers.ErrUnsupportedAlgorithm},
		{"unknown key", frame(wire.TypeMAC, 17, 3, 1, 'x'), 17, providers.ErrKeyNotFound},
		{"key name not a name", frame(wire.TypeMAC, 18, 3, 3, '.', '/', 0), 18, providers.ErrKeyNotFound},
		{"finalize unknown context", frame(wire.TypeFinalize, 19, 0, 0, 0, 42), 19, providers.ErrUnknownContext},
		{"update unknown context", frame(wire.TypeUpdate, 20, 0, 0, 0, 42, 'x'), 20, providers.ErrUnknownContext},
		{"copy unknown context", frame(wire.TypeCopy, 21, 0, 0, 0, 42, 0, 0, 0, 43), 21, providers.ErrUnknownContext},
		{"second HELLO", frame(wire.TypeHello, 22, 'H', 'M', 'A', 'C', 0, 1, 0, 1), 22, wire.ErrBadRequest},
		{"generate with empty name", frame(wire.TypeGenerateKey, 23, 0, 0, 0, 0, 0, 0), 23, providers.ErrInvalidArgument},
	}
	for _, tc := range cases {
		r.sendRaw(tc.frame)
		r.expectError(tc.id, tc.want)
		r.mac(1000, tc.name) // still serving
	}

	// Update after finalize: the context is gone.
	r.send(wire.Message{Type: wire.TypeOpen, ID: 30, Context: 5, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	if m := r.recv(); m.Type != wire.TypeOK {
		t.Fatalf("open: %+v", m)
	}
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 31, Context: 5})
	if m := r.recv(); m.Type != wire.TypeTag {
		t.Fatalf("finalize: %+v", m)
	}
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 32, Context: 5, Data: []byte("late")})
	r.expectError(32, providers.ErrUnknownContext)
	r.send(wire.Message{Type: wire.TypeVerify, ID: 33, Context: 5, Tag: reference("")})
	r.expectError(33, providers.ErrUnknownContext)

	// A context ID in use cannot be opened again.
	r.send(wire.Message{Type: wire.TypeOpen, ID: 34, Context: 6, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	r.recv()
	r.send(wire.Message{Type: wire.TypeOpen, ID: 35, Context: 6, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	r.expectError(35, providers.ErrInvalidArgument)

	// Another connection cannot touch this one's context 6.
	other := dialRaw(t, a.Path, true)
	other.send(wire.Message{Type: wire.TypeFinalize, ID: 1, Context: 6})
	other.expectError(1, providers.ErrUnknownContext)
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 36, Context: 6})
	if m := r.recv(); m.Type != wire.TypeTag || !bytes.Equal(m.Tag, reference("")) {
		t.Fatalf("own context after another connection's attempt: %+v", m)
	}
	t.Logf("%d malformed or out-of-place requests answered with their errors", len(cases)+4)
}

func TestOversizeFrameClosesConnection(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{MaxFrame: 4096})
	r := dialRaw(t, a.Path, true)
	r.sendRaw([]byte{0x7f, 0xff, 0xff, 0xff, 0x11})
	r.expectError(0, wire.ErrBadRequest)
	r.expectClosed()
	dialRaw(t, a.Path, true).mac(1, "others are still served")
}

func TestStickyUpdateError(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{})
	r := dialRaw(t, a.Path, true)
	r.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key")})
	if m := r.recv(); m.Type != wire.TypeOK {
		t.Fatalf("open: %+v", m)
	}
	// Updates are not answered, even the one that fails.
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: []byte("a")})
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 3, Context: 1, Data: []byte("fail")})
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 4, Context: 1, Data: []byte("b")})
	r.send(wire.Message{Type: wire.TypeCopy, ID: 5, Context: 1, NewContext: 2})
	m := r.expectError(5, providers.ErrUnavailable)
	if bytes.Contains(m.Data, []byte("CKR_")) {
		t.Errorf("provider's own error text reached the client: %q", m.Data)
	}
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 6, Context: 1})
	r.expectError(6, providers.ErrUnavailable)
	// The context is finished now.
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 7, Context: 1})
	r.expectError(7, providers.ErrUnknownContext)
}

// TestOutOfOrderReplies: a slow device must not hold up other requests on
// the same connection.
func TestOutOfOrderReplies(t *testing.T) {
	a := startFake(t, &fakeAgent{delay: 300 * time.Millisecond}, socket.Limits{})
	r := dialRaw(t, a.Path, true)
	r.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key")})
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 2, Context: 1, Data: []byte("slow ")})
	r.send(wire.Message{Type: wire.TypeCopy, ID: 3, Context: 1, NewContext: 2})
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 4, Context: 2, Data: []byte("copy")})
	r.send(wire.Message{Type: wire.TypeUpdate, ID: 5, Context: 1, Data: []byte("original")})
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 6, Context: 1})
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 7, Context: 2})
	r.send(wire.Message{Type: wire.TypeMAC, ID: 8, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: []byte("fast")})

	var order []uint32
	tags := map[uint32][]byte{}
	for range 5 {
		m := r.recv()
		if m.Type == wire.TypeError {
			t.Fatalf("id %d: %s %q", m.ID, m.Code, m.Data)
		}
		order = append(order, m.ID)
		tags[m.ID] = m.Tag
	}
	pos := map[uint32]int{}
	for i, id := range order {
		pos[id] = i
	}
	if pos[8] > pos[6] || pos[8] > pos[7] {
		t.Errorf("reply order %v: the fast MAC (8) waited for the slow device", order)
	}
	for id, msg := range map[uint32]string{6: "slow original", 7: "slow copy", 8: "fast"} {
		if !bytes.Equal(tags[id], reference(msg)) {
			t.Errorf("id %d: tag %x, want HMAC(%q)", id, tags[id], msg)
		}
	}
	t.Logf("reply order %v", order)
}

func TestContextLimit(t *testing.T) {
	a := start(t, agenttest.Options{Limits: agent.Limits{MaxContextsPerSession: 3}})
	r := dialRaw(t, a.Path, true)
	open := func(id, ctxID uint32) {
		r.send(wire.Message{Type: wire.TypeOpen, ID: id, Context: ctxID, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	}
	for i := uint32(1); i <= 3; i++ {
		open(i, i)
		if m := r.recv(); m.Type != wire.TypeOK {
			t.Fatalf("open %d: %+v", i, m)
		}
	}
	open(4, 4)
	m := r.expectError(4, providers.ErrLimit)
	if !bytes.Contains(m.Data, []byte("at most 3")) {
		t.Errorf("limit message %q does not say the limit", m.Data)
	}
	r.send(wire.Message{Type: wire.TypeCopy, ID: 5, Context: 1, NewContext: 9})
	r.expectError(5, providers.ErrLimit)
	r.mac(6, "one-shots need no context")
	// Another connection has its own allowance.
	other := dialRaw(t, a.Path, true)
	other.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	if m := other.recv(); m.Type != wire.TypeOK {
		t.Fatalf("other connection: %+v", m)
	}
	r.send(wire.Message{Type: wire.TypeClose, ID: 7, Context: 2})
	open(8, 4)
	if m := r.recv(); m.Type != wire.TypeOK || m.ID != 8 {
		t.Fatalf("open after CLOSE freed a place: %+v", m)
	}
}

func TestConnectionCloseFreesContexts(t *testing.T) {
	slow := &agenttest.SlowProvider{Secret: testSecret}
	a := start(t, agenttest.Options{Providers: []providers.Provider{slow}})
	for round := range 20 {
		r := dialRaw(t, a.Path, true)
		for i := uint32(1); i <= 50; i++ {
			key := "k"
			if i%2 == 0 {
				key = "slow-key"
			}
			r.send(wire.Message{Type: wire.TypeOpen, ID: i, Context: i, Algorithm: uint8(providers.SHA256), Key: []byte(key)})
			r.send(wire.Message{Type: wire.TypeUpdate, Context: i, Data: bytes.Repeat([]byte{byte(round)}, 1000)})
		}
		for range 50 {
			r.recv()
		}
		r.nc.Close() // mid-stream
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := a.Agent.Status(context.Background())
		if st.Contexts == 0 && st.Connections == 0 && slow.Opened.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing: %d contexts, %d connections, %d device contexts", st.Contexts, st.Connections, slow.Opened.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPipelinedOneShots(t *testing.T) {
	a := startFake(t, &fakeAgent{}, socket.Limits{})
	r := dialRaw(t, a.Path, true)
	// The first request on a key not yet resolved is looked up off the
	// reader (finding a key may reach a device), so its reply may come
	// after later ones; the protocol matches replies by ID. Once the key
	// is known to be a software key, its one-shots run inline, in order.
	r.send(wire.Message{Type: wire.TypeMAC, ID: 100000, Algorithm: uint8(providers.SHA256), Key: []byte("k")})
	if m := r.recv(); m.ID != 100000 || m.Type != wire.TypeTag {
		t.Fatalf("first MAC: %+v", m)
	}
	const n = 2000
	var batch []byte
	for i := uint32(1); i <= n; i++ {
		m := wire.Message{Type: wire.TypeMAC, ID: i, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: binary.BigEndian.AppendUint32(nil, i)}
		batch, _ = m.Append(batch)
	}
	go r.nc.Write(batch)
	for i := uint32(1); i <= n; i++ {
		m := r.recv()
		want := reference(string(binary.BigEndian.AppendUint32(nil, i)))
		if m.ID != i || !bytes.Equal(m.Tag, want) {
			t.Fatalf("reply %d: id %d tag %x", i, m.ID, m.Tag)
		}
	}
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// TestLargeFramesHandedOver: a large UPDATE frame reaches the session in
// a frame.Buffer, not a copy; a session that keeps it finds its bytes
// intact while later frames arrive, and once the session lets go, the
// socket holds no reference of its own (the buffer went back to the pool).
func TestLargeFramesHandedOver(t *testing.T) {
	f := &fakeAgent{keep: true}
	a := startFake(t, f, socket.Limits{})
	r := dialRaw(t, a.Path, true)
	r.send(wire.Message{Type: wire.TypeOpen, ID: 1, Context: 1, Algorithm: uint8(providers.SHA256), Key: []byte("slow-key")})
	if m := r.recv(); m.Type != wire.TypeOK {
		t.Fatalf("OPEN: %s %q", m.Type, m.Data)
	}
	var all []byte
	for i := range 20 {
		data := bytes.Repeat([]byte{byte(i)}, 64<<10)
		all = append(all, data...)
		r.send(wire.Message{Type: wire.TypeUpdate, ID: uint32(2 + i), Context: 1, Data: data})
	}
	r.send(wire.Message{Type: wire.TypeFinalize, ID: 100, Context: 1})
	if m := r.recv(); m.Type != wire.TypeTag || !bytes.Equal(m.Tag, sum(all)) {
		t.Fatalf("FINALIZE: %s %q", m.Type, m.Data)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held) != 20 {
		t.Fatalf("%d of 20 large frames handed over in a buffer", len(f.held))
	}
	for i, h := range f.held {
		if !bytes.Equal(h.data, h.want) {
			t.Fatalf("frame %d changed while the session held it", i)
		}
		h.b.Release()
		if h.b.Held() {
			t.Errorf("frame %d: a reference is still held after the session let go", i)
		}
	}
}
