package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hmac-agent/hmac-agent/socket/wire"
)

const bufferSize = 64 << 10

// conn is one connection to the agent: a writer shared by all callers,
// and no reader goroutine: a caller waiting for a reply reads the socket
// itself when nobody else is (the leader), handing other callers their
// replies, and passes the role on when its own reply has come. A reply
// then costs the caller one read, not a hand-off from another goroutine.
//
// Invariants: every ID in pending has a caller waiting on its call's
// channel or about to remove it; a call is signalled at most once; once
// err is set, pending is empty and stays so; only the holder of rmu reads.
type conn struct {
	nc       net.Conn
	maxFrame int

	// writers counts callers between wanting to write and having
	// written. The last of a burst flushes, so concurrent callers share
	// one write(2).
	writers   atomic.Int32
	wmu       sync.Mutex
	bw        *bufio.Writer
	needFlush bool
	werr      error

	pmu     sync.Mutex
	pending map[uint32]*call
	nextID  uint32
	err     error // set once the connection is broken

	nextContext atomic.Uint32

	rmu     sync.Mutex // the read role
	fr      *wire.FrameReader
	msg     wire.Message
	leadMsg chan struct{} // a token telling a waiter the read role is free

	dmu      sync.Mutex // orders deadline changes of a leader and its ctx
	leadTurn uint64     // counts leaders, so a late cancellation hits nobody
}

// call is one request waiting for its reply.
type call struct {
	ch   chan struct{}
	typ  wire.Type
	code wire.Code
	body []byte // TAG, DATA or the ERROR message, copied out of the frame
	// version is the key version a TAG_VERSION or VERIFIED names.
	version uint32
	err     error
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan struct{}, 1)} }}

func dialConn(ctx context.Context, path string, trusted []uint32) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("cannot connect to the agent at %s: %w: %v", path, ErrPermissionDenied, unwrapSyscall(err))
		}
		return nil, fmt.Errorf("no hmac-agent listening at %s (%w): %v", path, ErrAgentNotRunning, unwrapSyscall(err))
	}
	if err := checkAgent(nc, path, trusted); err != nil {
		nc.Close()
		return nil, err
	}
	c := &conn{
		nc:       nc,
		maxFrame: wire.MinMaxFrame,
		bw:       bufio.NewWriterSize(nc, bufferSize),
		pending:  make(map[uint32]*call),
		leadMsg:  make(chan struct{}, 1),
	}
	c.fr = wire.NewFrameReader(bufio.NewReaderSize(nc, bufferSize), wire.DefaultMaxFrame*16)
	hello := wire.Message{Type: wire.TypeHello, MinVersion: wire.MinVersion, MaxVersion: wire.Version}
	r, err := c.roundTrip(ctx, &hello)
	if err != nil {
		c.close(err)
		return nil, fmt.Errorf("handshake with the agent at %s: %w", path, err)
	}
	defer r.release()
	// An agent that will not serve this caller says why in the answer
	// to HELLO.
	if err := r.result(wire.TypeHelloReply); err != nil {
		c.close(err)
		return nil, fmt.Errorf("handshake with the agent at %s: %w", path, err)
	}
	var m wire.Message
	if err := wire.Decode(r.body, &m); err != nil {
		c.close(err)
		return nil, fmt.Errorf("handshake with the agent at %s: %w", path, err)
	}
	if m.Version < wire.MinVersion || m.Version > wire.Version {
		c.close(ErrProtocol)
		return nil, fmt.Errorf("handshake with the agent at %s: %w: it chose protocol version %d", path, ErrProtocol, m.Version)
	}
	c.maxFrame = int(m.MaxFrame)
	return c, nil
}

func unwrapSyscall(err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Err != nil {
		return oe.Err
	}
	return err
}

// broken returns the error that broke the connection, or nil.
func (c *conn) broken() error {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.err
}

// close breaks the connection with err and fails every waiting call.
func (c *conn) close(err error) {
	c.pmu.Lock()
	if c.err != nil {
		c.pmu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = map[uint32]*call{}
	c.pmu.Unlock()
	c.nc.Close()
	for _, cl := range pending {
		cl.err = err
		cl.ch <- struct{}{}
	}
}

// lead reads replies, handing each to its caller, until cl's has come,
// the connection breaks, or ctx ends; it reports false for the last. The
// caller holds rmu.
func (c *conn) lead(ctx context.Context, cl *call) bool {
	select {
	case <-cl.ch: // delivered by the leader before this one
		cl.ch <- struct{}{}
		return true
	default:
	}
	if ctx.Done() != nil {
		c.dmu.Lock()
		c.leadTurn++
		turn := c.leadTurn
		c.dmu.Unlock()
		stop := context.AfterFunc(ctx, func() {
			c.dmu.Lock()
			if c.leadTurn == turn { // still this leader: interrupt its read
				c.nc.SetReadDeadline(time.Now())
			}
			c.dmu.Unlock()
		})
		defer func() {
			stop()
			c.dmu.Lock()
			c.leadTurn++
			c.nc.SetReadDeadline(time.Time{})
			c.dmu.Unlock()
		}()
	}
	for {
		body, err := c.fr.Next()
		if err == nil {
			err = wire.Decode(body, &c.msg)
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil && !c.fr.MidFrame() {
				return false
			}
			// %w keeps the cause: end of stream or a reset is what
			// unanswered looks for.
			c.close(fmt.Errorf("%w: %w", ErrConnectionLost, err))
			return true
		}
		if c.deliver(body, &c.msg) == cl {
			return true
		}
	}
}

// deliver hands a reply to the call waiting for its ID and returns that
// call, or nil for a reply nobody waits for (an error for an UPDATE or
// CLOSE, or a call given up).
func (c *conn) deliver(body []byte, m *wire.Message) *call {
	c.pmu.Lock()
	cl := c.pending[m.ID]
	delete(c.pending, m.ID)
	c.pmu.Unlock()
	if cl == nil {
		return nil
	}
	cl.typ = m.Type
	cl.version = m.KeyVersion
	switch m.Type {
	case wire.TypeTag, wire.TypeTagVersion:
		cl.body = append(cl.body[:0], m.Tag...)
	case wire.TypeError:
		cl.code = m.Code
		cl.body = append(cl.body[:0], m.Data...)
	case wire.TypeHelloReply:
		cl.body = append(cl.body[:0], body...)
	default:
		cl.body = append(cl.body[:0], m.Data...)
	}
	cl.ch <- struct{}{}
	return cl
}

// handOver tells a waiting caller, if any, that the read role is free.
func (c *conn) handOver() {
	c.pmu.Lock()
	waiting := len(c.pending) > 0
	c.pmu.Unlock()
	if waiting {
		select {
		case c.leadMsg <- struct{}{}:
		default: // a token is there already
		}
	}
}

// write encodes frames under the writer lock; flush asks for them to be
// sent before the last concurrent writer returns.
func (c *conn) write(flush bool, encode func(b []byte) ([]byte, error)) error {
	c.writers.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		var b []byte
		b, c.werr = encode(c.bw.AvailableBuffer())
		if c.werr == nil && len(b) > 0 {
			_, c.werr = c.bw.Write(b)
		}
	}
	c.needFlush = c.needFlush || flush
	if c.writers.Add(-1) == 0 && c.needFlush && c.werr == nil {
		c.werr = c.bw.Flush()
		c.needFlush = false
	}
	if c.werr != nil {
		err := fmt.Errorf("%w: %w", ErrConnectionLost, c.werr)
		c.close(err) // also fails calls waiting for replies that cannot come
		return err
	}
	return nil
}

// writeData writes a frame whose payload ends with data, without copying
// data into the frame first.
func (c *conn) writeData(flush bool, header []byte, data []byte) error {
	return c.write(flush, func(b []byte) ([]byte, error) {
		if len(header)+len(data) <= cap(b) {
			return append(append(b, header...), data...), nil
		}
		if _, err := c.bw.Write(header); err != nil {
			return nil, err
		}
		_, err := c.bw.Write(data)
		return nil, err
	})
}

// register allocates a request ID for a call.
func (c *conn) register() (uint32, *call, error) {
	cl := callPool.Get().(*call)
	cl.err, cl.code, cl.typ = nil, 0, 0
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.err != nil {
		callPool.Put(cl)
		return 0, nil, c.err
	}
	c.nextID++
	for c.pending[c.nextID] != nil || c.nextID == 0 {
		c.nextID++
	}
	c.pending[c.nextID] = cl
	return c.nextID, cl, nil
}

// wait waits for cl's reply, reading the socket itself when nobody else
// is. On ctx's end it withdraws the call; a reply that arrives later is
// dropped.
func (c *conn) wait(ctx context.Context, id uint32, cl *call) (*call, error) {
	for {
		select {
		case <-cl.ch:
			return c.delivered(cl)
		default:
		}
		if c.rmu.TryLock() {
			got := c.lead(ctx, cl)
			c.rmu.Unlock()
			c.handOver()
			if !got {
				c.withdraw(id, cl)
				return nil, ctx.Err()
			}
			continue
		}
		select {
		case <-cl.ch:
			return c.delivered(cl)
		case <-c.leadMsg: // the read role is free: try to take it
		case <-ctx.Done():
			c.withdraw(id, cl)
			return nil, ctx.Err()
		}
	}
}

func (c *conn) delivered(cl *call) (*call, error) {
	if cl.err != nil {
		err := cl.err
		callPool.Put(cl)
		return nil, err
	}
	return cl, nil
}

// withdraw takes back a call nobody will wait for and returns it to the
// pool. If the reader or close already took it from pending, a signal is
// coming or has come: it is consumed first, or the call's next user would
// wake to this call's reply.
func (c *conn) withdraw(id uint32, cl *call) {
	c.pmu.Lock()
	_, mine := c.pending[id]
	delete(c.pending, id)
	c.pmu.Unlock()
	if !mine {
		<-cl.ch
	}
	callPool.Put(cl)
}

// roundTrip sends m with a fresh request ID and waits for the reply. The
// caller must release the reply.
func (c *conn) roundTrip(ctx context.Context, m *wire.Message) (*call, error) {
	id, cl, err := c.register()
	if err != nil {
		return nil, err
	}
	m.ID = id
	if err := c.write(true, m.Append); err != nil {
		c.withdraw(id, cl)
		return nil, &notSentError{err}
	}
	return c.wait(ctx, id, cl)
}

// notSentError is a request that never reached the agent: its write
// failed, so sending it again on a new connection cannot run it twice.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// unanswered reports whether err is a request's connection ended by the
// agent, at end of stream, with a reset or a broken pipe (met by another
// caller's write), after the request was written and before any reply
// came: what a request written in the moment the agent closed an idle
// connection sees. The agent never read such a request, unless it died
// running it.
func unanswered(err error) bool {
	return errors.Is(err, ErrConnectionLost) &&
		(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

func (cl *call) release() { callPool.Put(cl) }

// result turns a reply into an error; an ERROR reply becomes a
// *wire.RemoteError that errors.Is matches to its sentinel.
//
// A TAG_VERSION answers for TAG, and VERIFIED for OK: an agent of
// protocol version 2 says which key version it used, one of version 1
// does not.
func (cl *call) result(want wire.Type) error {
	switch {
	case cl.typ == want,
		want == wire.TypeTag && cl.typ == wire.TypeTagVersion,
		want == wire.TypeOK && cl.typ == wire.TypeVerified:
		return nil
	}
	switch cl.typ {
	case wire.TypeError:
		return &wire.RemoteError{Code: cl.code, Message: string(cl.body)}
	}
	return fmt.Errorf("%w: agent replied %s, expected %s", ErrProtocol, cl.typ, want)
}
