package socket

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// Buffer sizes per connection. Requests and replies are small; a large
// UPDATE frame is read past the buffer into a pooled one, so a bigger
// buffer would only cost memory on every idle connection.
//
// Until HELLO a connection has buffers just large enough for it and the
// answer: a thousand connections that never say HELLO held 17 MiB of
// buffers, and the heap they grew left 1.8 MiB of the Go runtime's
// bookkeeping behind them when they went. The write buffer grows once the
// handshake is answered, the read buffer at the first moment the reader
// has nothing unread (wire.FrameReader.Grow).
const (
	readBufferSize  = 16 << 10
	writeBufferSize = 16 << 10
	helloBufferSize = 256
)

// conn is one client connection. The reader goroutine owns fr, msg and
// scratch; everything that writes holds wmu.
type conn struct {
	srv  *Server
	nc   net.Conn
	peer agent.Peer
	sess Session
	fr   *wire.FrameReader
	msg  wire.Message
	ctx  context.Context

	scratch [wire.MaxTag]byte
	// inTurn is whether the reader holds a counted turn at the CPUs
	// (see enter).
	inTurn bool
	// restore ends the reader's lower priority (see background); nil
	// while it runs at the normal one.
	restore func()
	// turns counts the requests read since the reader last yielded.
	turns int
	// proto is the protocol version the handshake agreed on.
	proto uint16
	// grown is whether the read buffer has its full size (see
	// helloBufferSize).
	grown bool

	wmu  sync.Mutex
	bw   *bufio.Writer
	werr error
	// wdeadline is the write deadline set last (see replyWriter).
	wdeadline time.Time
	// lowTid is the thread the reader is locked to while it runs in the
	// background, else 0 (see replyWriter).
	lowTid atomic.Int32

	inflight chan struct{} // a token per request running outside the reader
	queued   *backlog      // the data of those requests
	wg       sync.WaitGroup

	qmu    sync.Mutex
	queues map[uint32]*queue // contexts whose requests run outside the reader
	// manageQ runs key-management requests (see goAsync). It is not in
	// queues, so manageQueueID never names it there.
	manageQ queue
}

// queue runs one context's requests in the order they arrived.
type queue struct {
	ops     []func()
	running bool
	blocked bool // a COPY that creates this context has not finished
	done    bool // the context was finished; drop the queue when empty
	// live is whether the context is open: set when an OPEN or a COPY
	// onto it succeeds, cleared when a FINALIZE, VERIFY or CLOSE ends
	// it. A later OPEN of the same ID that fails ("already open") must
	// not drop the queue of the context still open, whose requests would
	// then run on the reader; one that fails after the context ended must
	// drop it, or a client reusing IDs leaves a queue behind at each.
	live bool
	// immediate is set once the context opened on a key that never
	// waits (Session.ContextImmediate): a software key that was not
	// found yet when its OPEN arrived. The requests already queued run
	// in the CPU turns, as the reader's own do, and the queue goes when
	// they have run, so that later ones run on the reader.
	immediate bool
	// inTurn is whether the request running from the queue holds a
	// counted turn at the CPUs; only that request's goroutine uses it.
	inTurn bool
}

func newConn(s *Server, nc net.Conn) *conn {
	fr := wire.NewFrameReader(bufio.NewReaderSize(nc, helloBufferSize), wire.MaxHelloFrame)
	// Frames that callers make the agent hold go back whole when let go
	// (serve Frees the reader).
	fr.UseMappedMemory()
	c := &conn{
		srv:      s,
		nc:       nc,
		fr:       fr,
		inflight: make(chan struct{}, s.limits.MaxInFlight),
		queued:   newBacklog(s.limits.MaxQueuedBytes),
		queues:   make(map[uint32]*queue),
	}
	c.bw = bufio.NewWriterSize(replyWriter{c}, helloBufferSize)
	return c
}

// drain makes the reader see the end of input after what it has buffered,
// so the connection finishes its requests and closes. Called by Shutdown.
func (c *conn) drain() {
	if uc, ok := c.nc.(*net.UnixConn); ok {
		uc.CloseRead()
		return
	}
	c.nc.Close()
}

// serve serves the connection of peer, whose uid ServeConn admitted
// (peer's credentials only: its identity is read here).
func (c *conn) serve(ctx context.Context, peer agent.Peer) {
	ctx, cancel := context.WithCancel(ctx)
	c.ctx = ctx
	if need := c.srv.agent.IdentityNeed(); need > agent.NeedNone && peer.Known {
		full, err := peerOf(c.nc, need, c.srv.limits.HashTimeout)
		if err != nil {
			// Judged without its identity, the caller would be denied
			// for no reason it could see: say why instead.
			c.srv.log.With("peer", peer.String()).Warn("connection refused: its identity could not be read", "err", err)
			c.refuseHello(err)
			cancel()
			c.nc.Close()
			return
		}
		peer = full
	}
	c.peer = peer
	log := c.srv.log.With("peer", peer.String())
	c.sess = c.srv.newSession(peer)
	// Every call made for this peer carries its uid's budget, so that a
	// provider keeping its bytes charges them to it.
	c.ctx = providers.WithBudget(ctx, c.sess.Budget())
	c.fr.SetBudget(c.sess.Budget())
	log.Debug("connection opened")
	err := c.readLoop()
	// Let requests already running finish and send their replies: a
	// client that half-closes still gets its answers.
	c.wg.Wait()
	c.flush()
	cancel()
	c.fr.Free()
	c.sess.Close()
	c.nc.Close()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		log.Debug("connection closed", "err", err)
	} else {
		log.Debug("connection closed")
	}
}

func (c *conn) readLoop() error {
	if err := c.handshake(); err != nil {
		return err
	}
	defer c.foreground()
	for {
		c.yield()
		if !c.fr.Whole() {
			// Next may wait for the peer: the replies go out first, and
			// the reader waits at the normal priority (see background).
			c.foreground()
			if err := c.flush(); err != nil {
				return err
			}
			if c.fr.Buffered() == 0 { // going idle, not only mid-frame
				c.fr.Release()
				if !c.grown {
					c.grown = c.fr.Grow(c.nc, readBufferSize)
				}
			}
			c.armIdle()
		}
		body, err := c.fr.Next()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// A frame begun, in the buffer or past it, and not
			// finished within the timeout ends the connection too.
			if c.idle() || c.fr.MidFrame() || c.fr.Buffered() > 0 {
				return errIdle
			}
			c.armIdle() // busy after all: wait again
			continue
		}
		switch {
		case errors.Is(err, providers.ErrLimit):
			// The uid's budget could not hold the frame, whose rest was
			// not read: say why, then hang up.
			c.replyError(0, err)
			return err
		case errors.Is(err, wire.ErrEmptyFrame):
			c.replyError(0, providers.Publicf(wire.ErrBadRequest, "zero-length frame"))
			continue
		case errors.Is(err, wire.ErrFrameTooLarge):
			// The body was not read, so the stream is out of step: say
			// why, then hang up.
			c.replyError(0, providers.Publicf(wire.ErrBadRequest, "%v", err))
			return err
		case err != nil:
			return err
		}
		c.background(len(body))
		if err := wire.Decode(body, &c.msg); err != nil {
			if errors.Is(err, wire.ErrUnknownType) {
				c.replyError(c.msg.ID, providers.Publicf(wire.ErrUnknownMessage, "unknown message type 0x%02x", uint8(c.msg.Type)))
			} else {
				c.replyError(c.msg.ID, providers.Publicf(wire.ErrBadRequest, "%v", err))
			}
			continue
		}
		c.dispatch(&c.msg)
	}
}

// errIdle ends a connection that was idle for the idle timeout.
var errIdle = errors.New("idle connection closed")

// armIdle sets the deadline of the read about to block to the idle
// timeout. Past it, the reader closes the connection if it is idle (see
// idle), and otherwise waits another timeout: a context may finish on
// another goroutine while the reader waits, so the reader looks again
// rather than wait without a deadline. A frame begun but not finished
// within the timeout ends the connection too: a client writes a frame
// whole, and half a frame is memory held for nothing.
func (c *conn) armIdle() {
	if t := c.srv.limits.IdleTimeout; t > 0 {
		c.nc.SetReadDeadline(time.Now().Add(t))
	}
}

// idle reports whether the connection has no context open, no request
// running and no input waiting, so closing it loses nothing: a client
// whose request crosses the close finds its connection gone before
// anything was read, and sends the request again on a new one.
func (c *conn) idle() bool {
	return c.sess.Contexts() == 0 && len(c.inflight) == 0 && c.fr.Buffered() == 0
}

// refuseHello answers the peer's HELLO, if it comes within the hello
// timeout, with err: a client learns why as the answer to its HELLO.
func (c *conn) refuseHello(err error) {
	c.nc.SetReadDeadline(time.Now().Add(c.srv.limits.HelloTimeout))
	var m wire.Message
	if body, rerr := c.fr.Next(); rerr == nil && wire.Decode(body, &m) == nil && m.Type == wire.TypeHello {
		c.replyError(m.ID, err)
	} else {
		c.replyError(0, err)
	}
	c.flush()
}

// handshake reads HELLO, which must come within the hello timeout and in
// a frame no larger than wire.MaxHelloFrame: until a peer has said who it
// is and what it speaks, it gets neither time nor memory.
func (c *conn) handshake() error {
	c.nc.SetReadDeadline(time.Now().Add(c.srv.limits.HelloTimeout))
	body, err := c.fr.Next()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.replyError(0, providers.Publicf(wire.ErrVersion, "no HELLO within %s", c.srv.limits.HelloTimeout))
		c.flush()
		return err
	}
	if err != nil {
		if errors.Is(err, wire.ErrEmptyFrame) || errors.Is(err, wire.ErrFrameTooLarge) {
			c.replyError(0, providers.Publicf(wire.ErrVersion, "expected HELLO"))
			c.flush()
		}
		return err
	}
	var m wire.Message
	if err := wire.Decode(body, &m); err != nil || m.Type != wire.TypeHello {
		c.replyError(m.ID, providers.Publicf(wire.ErrVersion, "the first message must be HELLO"))
		c.flush()
		return fmt.Errorf("no handshake: %v", err)
	}
	c.proto = min(m.MaxVersion, wire.Version)
	if c.proto < max(m.MinVersion, wire.MinVersion) {
		c.replyError(m.ID, providers.Publicf(wire.ErrVersion, "agent speaks versions %d to %d, client %d to %d", wire.MinVersion, wire.Version, m.MinVersion, m.MaxVersion))
		c.flush()
		return errors.New("no common version")
	}
	c.nc.SetReadDeadline(time.Time{})
	c.fr.SetMax(c.srv.limits.MaxFrame)
	lim := c.srv.agent.Limits()
	c.reply(&wire.Message{
		Type: wire.TypeHelloReply, ID: m.ID, Version: c.proto,
		MaxFrame:    uint32(c.srv.limits.MaxFrame),
		MaxContexts: uint32(lim.MaxContextsPerSession),
		MaxInFlight: uint32(c.srv.limits.MaxInFlight),
	})
	if err := c.flush(); err != nil {
		return err
	}
	c.wmu.Lock()
	c.bw = bufio.NewWriterSize(replyWriter{c}, writeBufferSize)
	c.wmu.Unlock()
	return nil
}

// dispatch runs a request inline when it cannot wait: a request on a key
// whose provider never waits (Session.Immediate), a request on a context
// that has no queue (a software key's, or an unknown one), or a malformed
// one. Anything that may reach a device goes to its context's queue or a
// goroutine, however fast the device has been: a device that stops
// answering mid-call must not hold up the requests behind it. The reader
// asks the agent at most one question per request.
func (c *conn) dispatch(m *wire.Message) {
	switch m.Type {
	case wire.TypeOpen, wire.TypeUpdate, wire.TypeCopy, wire.TypeFinalize, wire.TypeVerify, wire.TypeClose:
		c.qmu.Lock()
		// A COPY onto an ID whose queue still runs waits its turn there
		// too (see holdTargetLocked), whatever its source is.
		queued := c.queues[m.Context] != nil || m.Type == wire.TypeCopy && c.queues[m.NewContext] != nil
		c.qmu.Unlock()
		if !queued && (m.Type != wire.TypeOpen || c.sess.Immediate(m.Key)) {
			c.contextOp(m, nil, nil)
			return
		}
		c.enqueue(m)
	case wire.TypeMAC, wire.TypeVerifyMAC:
		if c.sess.Immediate(m.Key) {
			c.oneShot(m, c.scratch[:0])
			return
		}
		c.startOneShot(m)
	case wire.TypeListKeys, wire.TypeStatus:
		c.goManage(m)
	case wire.TypeGenerateKey, wire.TypeImportKey, wire.TypeImportWrapped, wire.TypeDeleteKey,
		wire.TypeRotateKey, wire.TypeRetireVersion:
		if c.srv.agent.MayManage(c.peer) {
			c.goManage(m)
			return
		}
		// Refused for who the caller is, before any provider: answered
		// here, in the caller's turn (the reply after it), like a
		// software one-shot. Handed to the management queue, a flood of
		// them cost a goroutine wake and a write per request, and another
		// caller's request waited for the threads busy with them.
		c.enter(nil)
		r := c.manageReply(m)
		c.leave(nil)
		c.reply(r)
	case wire.TypeHello:
		c.replyError(m.ID, providers.Publicf(wire.ErrBadRequest, "HELLO after the handshake"))
	default: // a reply type sent as a request
		c.replyError(m.ID, providers.Publicf(wire.ErrUnknownMessage, "%s is not a request", m.Type))
	}
}

// contextOp runs a request on a context and returns its error. q is the
// context's queue when the request runs from one, and body the frame m
// was decoded from when the reader handed it over, of which contextOp
// releases the reference it was given.
func (c *conn) contextOp(m *wire.Message, q *queue, body *frame.Buffer) error {
	defer body.Release()
	s := c.sess
	var err error
	switch m.Type {
	case wire.TypeOpen:
		c.enter(q)
		err = s.Open(c.ctx, m.Context, m.Key, providers.Algorithm(m.Algorithm))
		c.leave(q)
		c.replyResult(m.ID, err)
	case wire.TypeUpdate:
		// No reply, unless there is no context to keep the error.
		err = c.updateInTurns(q, m.Context, m.Data, body)
		if err != nil {
			c.replyError(m.ID, err)
		}
	case wire.TypeCopy:
		c.enter(q)
		err = s.Copy(c.ctx, m.Context, m.NewContext)
		c.leave(q)
		c.replyResult(m.ID, err)
	case wire.TypeFinalize:
		var tag []byte
		var version int
		c.enter(q)
		tag, version, err = s.FinalizeVersion(c.ctx, m.Context, c.scratchFor(q))
		c.leave(q)
		c.replyTag(m.ID, tag, version, err)
	case wire.TypeVerify:
		var version int
		c.enter(q)
		version, err = s.VerifyVersion(c.ctx, m.Context, m.Tag)
		c.leave(q)
		c.replyVerified(m.ID, version, err)
	case wire.TypeClose:
		c.enter(q)
		s.Abandon(m.Context)
		c.leave(q)
	}
	return err
}

// scratchFor returns a buffer for a tag: the reader's own when running
// inline, a new one otherwise.
func (c *conn) scratchFor(q *queue) []byte {
	if q == nil {
		return c.scratch[:0]
	}
	return make([]byte, 0, 64)
}

// oneShot runs MAC or VERIFY_MAC; dst is where the tag goes, the
// reader's scratch only when running in the reader.
func (c *conn) oneShot(m *wire.Message, dst []byte) {
	alg := providers.Algorithm(m.Algorithm)
	ctx := c.oneShotContext(m.Data)
	if m.Type == wire.TypeMAC {
		c.enter(nil)
		tag, version, err := c.sess.MACVersion(ctx, m.Key, alg, m.Data, nil, dst)
		c.leave(nil)
		c.replyTag(m.ID, tag, version, err)
		return
	}
	c.enter(nil)
	version, err := c.sess.VerifyMACVersion(ctx, m.Key, alg, m.Data, nil, m.Tag)
	c.leave(nil)
	c.replyVerified(m.ID, version, err)
}

// startOneShot hands a one-shot that may wait on a device to the agent,
// which answers on a goroutine of its own (the device call's, or its
// deadline's), or at once for an error it finds without the device: one
// hand-off, where a goroutine of the connection's waiting for the call
// would be a second.
func (c *conn) startOneShot(m *wire.Message) {
	n, over, ok := c.acquire(m)
	if !ok {
		return
	}
	if over != nil {
		c.replyError(m.ID, over)
		c.release(0)
		return
	}
	// Handing the call over is work on the agent's CPUs like a software
	// one-shot's, done in the caller's turn (see enter): a flood's
	// readers each handing calls over on a processor of their own kept
	// every processor from another caller's request. acquire, which may
	// wait, comes first, and a reply made before the reader has left its
	// turn waits for it to (replyAfterTurn): a write may wait for the
	// peer, and a turn held while waiting would stop others.
	c.enter(nil)
	o, body := c.own(m)
	after := new(replyAfterTurn)
	finish := func(flush bool) {
		body.Release()
		if flush {
			c.flush()
		}
		c.release(n)
	}
	alg := providers.Algorithm(o.Algorithm)
	if o.Type == wire.TypeMAC {
		c.sess.StartMAC(c.ctx, o.Key, alg, o.Data, body, make([]byte, 0, 64), func(tag []byte, version int, err error) {
			if after.hold(func() { c.replyTag(o.ID, tag, version, err); finish(false) }) {
				return
			}
			c.replyTag(o.ID, tag, version, err)
			finish(true)
		})
	} else {
		c.sess.StartVerifyMAC(c.ctx, o.Key, alg, o.Data, body, o.Tag, func(version int, err error) {
			if after.hold(func() { c.replyVerified(o.ID, version, err); finish(false) }) {
				return
			}
			c.replyVerified(o.ID, version, err)
			finish(true)
		})
	}
	c.leave(nil)
	after.turnLeft()
}

// manage runs a key-management request and queues its reply.
func (c *conn) manage(m *wire.Message) { c.reply(c.manageReply(m)) }

// manageReply runs a key-management request and returns its reply.
func (c *conn) manageReply(m *wire.Message) *wire.Message {
	a, peer := c.srv.agent, c.peer
	var (
		v   any
		err error
	)
	switch m.Type {
	case wire.TypeListKeys:
		v, err = a.ListKeys(c.ctx, peer)
	case wire.TypeGenerateKey:
		v, err = a.GenerateKey(c.ctx, peer, string(m.Provider), string(m.Key), int(m.Length))
	case wire.TypeImportKey:
		v, err = a.ImportKey(c.ctx, peer, string(m.Provider), string(m.Key), m.Data)
		clear(m.Data)
	case wire.TypeImportWrapped:
		v, err = a.ImportWrappedKey(c.ctx, peer, string(m.Provider), string(m.Key), string(m.Wrapping), m.Data)
	case wire.TypeDeleteKey:
		err = a.DeleteKey(c.ctx, peer, string(m.Provider), string(m.Key))
	case wire.TypeRotateKey:
		var secret []byte // nil: generate
		if m.Flags&wire.FlagImport != 0 {
			secret = m.Data
			if secret == nil {
				secret = []byte{}
			}
		}
		v, err = a.RotateKey(c.ctx, peer, string(m.Provider), string(m.Key), secret, int(m.Length))
		clear(m.Data)
	case wire.TypeRetireVersion:
		err = a.RetireVersion(c.ctx, peer, string(m.Provider), string(m.Key), int(m.KeyVersion), m.Flags&wire.FlagDestroy != 0)
	case wire.TypeStatus:
		v = a.StatusFor(c.ctx, peer)
	}
	var data []byte
	if err == nil && v != nil {
		data, err = json.Marshal(v)
	}
	switch {
	case err != nil:
		return c.errorMessage(m.ID, err)
	case v == nil:
		return &wire.Message{Type: wire.TypeOK, ID: m.ID}
	}
	return &wire.Message{Type: wire.TypeData, ID: m.ID, Data: data}
}

// own makes m's byte fields outlive the frame, for a request that runs
// after the reader has moved on. The large frame of a request that
// carries data to a key is handed over whole instead of copied, as body:
// streaming to a device would otherwise copy every byte once more; a
// small one is copied, and the copy is body. The caller holds body's one
// reference and releases it when the request has run. A management
// request is copied: its calls know nothing of frames.
func (c *conn) own(m *wire.Message) (o *wire.Message, body *frame.Buffer) {
	o = new(wire.Message)
	*o = *m
	data := m.Type == wire.TypeUpdate || m.Type == wire.TypeMAC || m.Type == wire.TypeVerifyMAC
	if data {
		if body := c.fr.Take(); body != nil {
			return o, body
		}
	}
	o.Key = append([]byte(nil), m.Key...)
	o.Provider = append([]byte(nil), m.Provider...)
	o.Wrapping = append([]byte(nil), m.Wrapping...)
	o.Tag = append([]byte(nil), m.Tag...)
	o.Data = append([]byte(nil), m.Data...)
	wipeImport(m)
	if data {
		// The copy is the request's own: a device call, or a context's
		// log, may keep it without copying it again.
		return o, frame.New(o.Data, nil)
	}
	return o, nil
}

// wipeImport zeroes the key bytes of an IMPORT_KEY request where the
// frame left them, in the connection's read buffer: the request's own
// copy is zeroed once the key is stored, and the buffer, freed with the
// connection, would otherwise keep the key on the heap.
func wipeImport(m *wire.Message) {
	if m.Type == wire.TypeImportKey || m.Type == wire.TypeRotateKey && m.Flags&wire.FlagImport != 0 {
		clear(m.Data)
	}
}

// acquire takes an in-flight token for m, and counts its data in the
// backlog; it returns what release must give back. An independent
// request (a one-shot or key management) is refused with ErrLimit when
// the connection has too many in flight. A request on a context waits
// instead: it is ordered behind the context's updates anyway, an UPDATE
// has no reply to carry an error, and a stream must not fail for being
// fast. Any request waits while the backlog is full. The reader stops
// reading meanwhile, flushing first: it must not sit on replies the
// client is waiting for.
//
// What the request holds until it has run (its data, and RequestMemory
// for the request itself and the goroutine or queue entry that runs it)
// is charged to the uid's budget too, so that one uid's requests in
// flight are bounded by max_bytes_per_uid over all its connections. A
// request the budget cannot hold keeps its token but nothing else:
// acquire returns the budget's error, which the caller answers with (or,
// for an UPDATE, makes the context's sticky error), and release(0) gives
// the token back. A request that ends a context is never refused, since
// it frees what the context holds: it waits for the connection's other
// requests to finish until the budget holds it, and goes uncharged only
// when it is the connection's one request in flight. Past the budget a
// connection so has at most one request in flight that is not charged.
func (c *conn) acquire(m *wire.Message) (held int, over error, ok bool) {
	select {
	case c.inflight <- struct{}{}:
	default:
		if !isContextRequest(m.Type) {
			c.replyError(m.ID, providers.Publicf(providers.ErrLimit,
				"too many requests in flight on this connection (at most %d)", cap(c.inflight)))
			return 0, nil, false
		}
		c.waitFlush()
		c.inflight <- struct{}{}
	}
	c.wg.Add(1)
	held = RequestMemory + len(m.Data) + len(m.Tag) + len(m.Key) + len(m.Provider) + len(m.Wrapping)
	for {
		err := c.sess.Budget().Charge(held)
		if err == nil {
			break
		}
		if !endsContext(m.Type) {
			return 0, err, true
		}
		c.waitFlush() // the replies of those it waits for
		if !c.queued.awaitDone(func() bool { return len(c.inflight) > 1 }) {
			return 0, nil, true
		}
	}
	c.queued.add(held-RequestMemory, c.waitFlush)
	return held, nil, true
}

func isContextRequest(t wire.Type) bool {
	switch t {
	case wire.TypeOpen, wire.TypeUpdate, wire.TypeCopy, wire.TypeFinalize, wire.TypeVerify, wire.TypeClose:
		return true
	}
	return false
}

// release gives back what acquire took for a request that has run. The
// token goes back before the backlog hears of it: a reader waiting in
// awaitDone counts the tokens when it wakes.
func (c *conn) release(held int) {
	c.sess.Budget().Release(held)
	<-c.inflight
	c.queued.done(max(held-RequestMemory, 0))
	c.wg.Done()
}

// manageQueueID is the ID runQueue is given for manageQ; the queue's own
// flags, not the ID, keep it out of queues.
const manageQueueID = 0

// goManage runs a key-management request after the connection's earlier
// ones, on a goroutine of their own: they may wait on a device, and they
// run one at a time, so that a flood of them (denied ones, say) is one
// goroutine to the Go scheduler, not hundreds.
func (c *conn) goManage(m *wire.Message) {
	n, over, ok := c.acquire(m)
	if !ok {
		wipeImport(m)
		return
	}
	if over != nil {
		wipeImport(m)
		c.replyError(m.ID, over)
		c.release(0)
		return
	}
	o, _ := c.own(m) // a management request: copied
	c.qmu.Lock()
	defer c.qmu.Unlock()
	c.manageQ.ops = append(c.manageQ.ops, func() {
		// A flood of management requests (denied ones, say) waits for its
		// caller's turn at the CPUs before each, like the reader's own
		// work; the turn is not held while the request runs, since it may
		// wait on a device.
		if key := c.sess.Budget(); c.srv.gate.Enter(key) {
			c.srv.gate.Leave(key)
		}
		c.manage(o)
		c.release(n)
		// Its reply goes out now, not when the queue has drained: the
		// requests behind it may wait on a device.
		c.flush()
	})
	c.startLocked(manageQueueID, &c.manageQ)
}

// enqueue adds a context request to the context's queue, creating the
// queue (and, for COPY, the new context's) as needed.
func (c *conn) enqueue(m *wire.Message) {
	n, over, ok := c.acquire(m)
	if !ok {
		return
	}
	var o *wire.Message
	var body *frame.Buffer
	if over != nil && m.Type == wire.TypeUpdate {
		// Its data is dropped, and the context fails with the budget's
		// error, in its turn, so that the next request that replies
		// reports it.
		o = &wire.Message{Type: wire.TypeUpdate, ID: m.ID, Context: m.Context}
		c.qmu.Lock()
		defer c.qmu.Unlock()
		q := c.queueFor(o)
		q.ops = append(q.ops, func() {
			c.sess.Fail(o.Context, over)
			c.release(0)
		})
		c.startLocked(o.Context, q)
		return
	}
	o, body = c.own(m)
	c.qmu.Lock()
	defer c.qmu.Unlock()
	created := c.queues[o.Context] == nil
	var target *queue
	var targetReady <-chan struct{}
	if o.Type == wire.TypeCopy && o.NewContext != o.Context {
		target, targetReady = c.holdTargetLocked(o.NewContext)
	}
	// After the target's: making a queue may sweep idle ones, and the
	// source's must be in the map when its request is added.
	q := c.queueFor(o)
	q.ops = append(q.ops, func() {
		if targetReady != nil {
			<-targetReady
		}
		var err error
		if over != nil {
			// An OPEN or a COPY the budget could not hold fails in its
			// turn, as it would have had it run.
			err = over
			c.replyResult(o.ID, err)
			body.Release()
		} else {
			err = c.contextOp(o, q, body)
		}
		c.qmu.Lock()
		switch o.Type {
		case wire.TypeOpen:
			if err == nil {
				q.live = true
				q.immediate = c.sess.ContextImmediate(o.Context)
			}
			// A context that never opened needs no queue, nor one on a
			// key that never waits.
			q.done = !q.live || q.immediate
		case wire.TypeFinalize, wire.TypeVerify, wire.TypeClose:
			q.live, q.done = false, true
		case wire.TypeCopy:
			// A queue made for this COPY alone, its source being a
			// context that runs inline or none, goes when empty.
			q.done = q.done || created && !q.live
			if target != nil {
				target.blocked = false
				if err == nil {
					target.live = true
					target.immediate = c.sess.ContextImmediate(o.NewContext)
				}
				target.done = !target.live || target.immediate
				c.startLocked(o.NewContext, target)
			}
		}
		c.qmu.Unlock()
		c.release(n)
	})
	c.startLocked(o.Context, q)
}

// queueFor returns the queue for m's context, made if need be. A queue
// made here for a request other than OPEN is one dispatch saw and that
// went meanwhile (its last request ran): if the context is open on a key
// that never waits, its requests run in the CPU turns as on the reader,
// and the queue goes once empty. Made plain, it ran them outside the
// turns. c.qmu is held.
func (c *conn) queueFor(m *wire.Message) *queue {
	created := c.queues[m.Context] == nil
	q := c.queueLocked(m.Context)
	if created && m.Type != wire.TypeOpen && c.sess.ContextImmediate(m.Context) {
		q.immediate, q.live, q.done = true, true, true
	}
	return q
}

// endsContext reports whether a request of type t finishes its context.
func endsContext(t wire.Type) bool {
	return t == wire.TypeFinalize || t == wire.TypeVerify || t == wire.TypeClose
}

// holdTargetLocked makes the queue of a COPY's target ID wait for the
// copy: requests on that ID sent before the COPY (on a context of that
// ID that ends first, say) run before it, and those sent after it run
// after it, on the copy. A queue with nothing to run is blocked at once;
// one still running is blocked when it reaches the COPY's place, which
// the returned channel reports, and the COPY waits for that. Without
// it a COPY onto the ID of a context just finished could run before
// that context's FINALIZE, which would then finish the copy.
func (c *conn) holdTargetLocked(id uint32) (*queue, <-chan struct{}) {
	t := c.queueLocked(id)
	if !t.running && !t.blocked && len(t.ops) == 0 {
		t.blocked, t.done = true, false
		return t, nil
	}
	ready := make(chan struct{})
	t.ops = append(t.ops, func() {
		c.qmu.Lock()
		t.blocked, t.done = true, false
		c.qmu.Unlock()
		close(ready)
	})
	c.startLocked(id, t)
	return t, ready
}

func (c *conn) queueLocked(id uint32) *queue {
	q := c.queues[id]
	if q == nil {
		c.sweepLocked()
		q = &queue{}
		c.queues[id] = q
	}
	return q
}

// sweepLocked drops the queues of contexts the agent ended on its own
// (idle, or revoked by a reload), which no request of the client's ends
// here: a client that opens contexts and leaves them to expire would
// otherwise grow the map by one queue each, for the connection's life,
// outside every budget. Queues that are needed number at most the open
// contexts, and for each request in flight one of an ended context
// still draining or of a COPY's target: the map is swept only when it
// outgrows that, so a sweep costs at most a few lookups per queue made.
// Only the reader adds requests to queues, and it holds qmu, so an idle
// queue whose context is gone has nothing on its way.
func (c *conn) sweepLocked() {
	if len(c.queues) <= c.sess.Contexts()+2*cap(c.inflight)+sweepSlack {
		return
	}
	for id, q := range c.queues {
		if !q.running && !q.blocked && len(q.ops) == 0 && !c.sess.IsOpen(id) {
			delete(c.queues, id)
		}
	}
}

// sweepSlack is how far the queues may outgrow what they are needed for
// before a sweep: requests finish and their queues go a moment later.
const sweepSlack = 64

// startLocked starts a worker for q unless one runs or q is blocked.
func (c *conn) startLocked(id uint32, q *queue) {
	if q.running || q.blocked || len(q.ops) == 0 {
		if !q.running && !q.blocked && q.done && len(q.ops) == 0 {
			delete(c.queues, id)
		}
		return
	}
	q.running = true
	go c.runQueue(id, q)
}

func (c *conn) runQueue(id uint32, q *queue) {
	for {
		c.qmu.Lock()
		if len(q.ops) == 0 || q.blocked {
			q.running = false
			if q.done && len(q.ops) == 0 && c.queues[id] == q {
				delete(c.queues, id)
			}
			c.qmu.Unlock()
			c.flush()
			return
		}
		op := q.ops[0]
		q.ops[0] = nil
		q.ops = q.ops[1:]
		c.qmu.Unlock()
		op()
	}
}
