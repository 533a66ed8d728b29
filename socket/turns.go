package socket

import (
	"context"
	"runtime"
	"sync/atomic"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/internal/threadprio"
	"github.com/hmac-agent/hmac-agent/providers"
)

// turnRequests is how many requests a reader runs itself before it lets
// the goroutines waiting to run go first (runtime.Gosched). A reader whose
// client keeps it supplied never blocks on its socket, and the Go
// scheduler runs it on until it is preempted, 10 ms later: another
// caller's reader, made ready by the network meanwhile, waits behind it.
const turnRequests = 16

// enter waits for the connection's caller to have its turn (fair.Gate)
// before a request does its work on the agent's CPUs: one the reader
// runs itself (q is nil), or one from the queue of a context on a key
// that never waits (queue.immediate). Only that work is in the turn: not
// reading the request nor writing the reply, which wait on the peer, and
// not a request from the queue of a context that may wait on a device. A
// turn held while waiting would stop every caller.
func (c *conn) enter(q *queue) {
	switch {
	case q == nil:
		c.inTurn = c.srv.gate.Enter(c.sess.Budget())
	case q.immediate:
		q.inTurn = c.srv.gate.Enter(c.sess.Budget())
	}
}

// yield lets the goroutines waiting to run go first once the reader has
// read turnRequests requests since it last did.
func (c *conn) yield() {
	if !c.srv.gate.Shared() {
		return // no other caller to yield to
	}
	if c.turns++; c.turns >= turnRequests {
		c.turns = 0
		runtime.Gosched()
	}
}

// replyAfterTurn holds back a one-shot's reply made while the reader that
// handed the call over still holds its turn (an error found at once, or
// a call that finished as fast), until the reader has left the turn. The
// held reply runs on the reader, which flushes before it waits.
type replyAfterTurn struct {
	state atomic.Int32 // turnHeld, replyHeld or turnGone
	reply func()
}

const (
	turnHeld int32 = iota
	replyHeld
	turnGone
)

// hold keeps reply for turnLeft to run, if the reader has not left its
// turn yet, and reports whether it did.
func (r *replyAfterTurn) hold(reply func()) bool {
	if r.state.Load() == turnGone {
		return false
	}
	r.reply = reply
	return r.state.CompareAndSwap(turnHeld, replyHeld)
}

// turnLeft is called by the reader once it has left its turn: it runs
// the reply held meanwhile, if any.
func (r *replyAfterTurn) turnLeft() {
	if !r.state.CompareAndSwap(turnHeld, turnGone) {
		r.reply()
	}
}

// leave ends the turn enter began.
func (c *conn) leave(q *queue) {
	held := &c.inTurn
	if q != nil {
		held = &q.inTurn
	}
	if *held {
		*held = false
		c.srv.gate.Leave(c.sess.Budget())
	}
}

// updateInTurns is Session.Update for the requests that run in turns
// (see enter), taking a turn for each providers.TurnInput bytes: a
// caller streaming megabytes to a software key must not hold the others
// up for longer than a few tens of microseconds at a time. b is the
// frame p lies in, if the request was handed one.
func (c *conn) updateInTurns(q *queue, id uint32, p []byte, b *frame.Buffer) error {
	if q != nil && !q.immediate {
		return c.sess.Update(c.ctx, id, p, b)
	}
	for {
		n := min(len(p), providers.TurnInput)
		c.enter(q)
		err := c.sess.Update(c.ctx, id, p[:n], b)
		c.leave(q)
		if err != nil || n == len(p) {
			return err
		}
		p = p[n:]
	}
}

// oneShotContext is the context for a one-shot the reader runs itself:
// over more than providers.TurnInput bytes, it lets the agent give the
// turn up between pieces (providers.WithPause).
func (c *conn) oneShotContext(data []byte) context.Context {
	if len(data) <= providers.TurnInput {
		return c.ctx
	}
	return providers.WithPause(c.ctx, c.pauseTurn)
}

// pauseTurn gives the reader's turn up and waits for the next.
func (c *conn) pauseTurn() {
	c.leave(nil)
	c.enter(nil)
}

// background runs the reader at a lower kernel priority (threadprio)
// while its client keeps it supplied (more input buffered behind the
// request it just read, or requests of the connection still running
// elsewhere) or sends a frame of more than providers.TurnInput bytes (of
// frame, its size), and another uid is connected: the agent serves
// every caller on threads of one process, and a thread busy with one
// caller's flood is one the kernel makes another caller's request wait
// for. A client that waits for each reply has neither, and keeps the
// normal priority. foreground ends it before the reader may wait: for
// its socket (the next frame not whole in its buffer) or for its
// requests to finish (waitFlush), so that no waiting reader keeps a
// thread of its own.
func (c *conn) background(frame int) {
	if c.srv.gate.Shared() && c.restore == nil && (c.fr.Buffered() > 0 || len(c.inflight) > 0 || frame > providers.TurnInput) {
		var thread int
		c.restore, thread = threadprio.Background()
		c.lowTid.Store(int32(thread))
	}
}

// waitFlush is flush for a reader about to wait for its requests to
// finish: at the normal priority, since a reader waiting would otherwise
// keep a thread of its own (threadprio locks it to one) for as long.
func (c *conn) waitFlush() error {
	c.foreground()
	return c.flush()
}

// foreground ends what background began.
func (c *conn) foreground() {
	if c.restore != nil {
		c.lowTid.Store(0)
		c.restore()
		c.restore = nil
	}
}
