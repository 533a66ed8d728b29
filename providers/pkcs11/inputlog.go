//go:build cgo

package pkcs11

import (
	"sync"
	"sync/atomic"

	"github.com/hmac-agent/hmac-agent/internal/frame"
)

// inputLog is the input of a context and its copies, kept for replay, as
// chunks that are never written once appended. A context owns the first n
// bytes; it appends in place only while it owns them all. A branch that
// has diverged starts a log of its own that shares the chunks of its
// prefix, so forking copies no data.
//
// A chunk that lies in a caller's frame.Buffer holds a reference to it,
// released when the last log holding the chunk lets go, so that
// streaming reuses the same buffers instead of asking the kernel for
// fresh pages: page faults on 64 MiB of fresh memory cost more than the
// token's hashing of it. Input that came in no Buffer is copied into one
// of the log's own (frame.Copy), off the Go heap when large.
type inputLog struct {
	mu     sync.Mutex
	pieces []piece
	total  int
	refs   int // logRefs on this log
}

// chunk is one buffer of input, shared by the logs that hold it.
type chunk struct {
	b    []byte
	buf  *frame.Buffer // holds b; nil: memory the log does not manage
	refs atomic.Int32  // logs holding it
}

// piece is a log's part of a chunk: all of it, or a prefix.
type piece struct {
	c *chunk
	b []byte
}

// logRef is a context's view of a log.
type logRef struct {
	log *inputLog
	n   int
}

func newLogRef() *logRef { return &logRef{log: &inputLog{refs: 1}} }

// fork returns another view of the same input, for a copy.
func (r *logRef) fork() *logRef {
	r.log.mu.Lock()
	r.log.refs++
	r.log.mu.Unlock()
	return &logRef{log: r.log, n: r.n}
}

// append adds b, which the log keeps: the caller must never write it
// again. buf, if not nil, is a reference to the buffer b lies in, which
// the log releases when no log needs b.
func (r *logRef) append(b []byte, buf *frame.Buffer) {
	c := &chunk{b: b, buf: buf}
	c.refs.Store(1)
	r.log.mu.Lock()
	if r.n == r.log.total {
		r.log.pieces = append(r.log.pieces, piece{c, b})
		r.log.total += len(b)
		r.log.mu.Unlock()
	} else {
		prefix := r.prefixLocked()
		for _, p := range prefix {
			p.c.refs.Add(1)
		}
		r.log.mu.Unlock()
		r.release()
		r.log = &inputLog{pieces: append(prefix, piece{c, b}), total: r.n + len(b), refs: 1}
	}
	r.n += len(b)
}

// prefixLocked returns the pieces holding the first n bytes, the last cut
// short if need be.
func (r *logRef) prefixLocked() []piece {
	var out []piece
	left := r.n
	for _, p := range r.log.pieces {
		if left == 0 {
			break
		}
		if len(p.b) > left {
			p.b = p.b[:left:left]
		}
		out = append(out, p)
		left -= len(p.b)
	}
	return out
}

// chunks returns the context's input, valid until the view is released;
// the chunks are never written again.
func (r *logRef) chunks() [][]byte {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	var out [][]byte
	for _, p := range r.prefixLocked() {
		out = append(out, p.b)
	}
	return out
}

// release lets go of the view. The last view of a log lets go of its
// chunks, and the last log holding a chunk gives it back.
func (r *logRef) release() {
	l := r.log
	l.mu.Lock()
	l.refs--
	last := l.refs == 0
	l.mu.Unlock()
	if !last {
		return
	}
	for _, p := range l.pieces {
		if p.c.refs.Add(-1) == 0 && p.c.buf != nil {
			p.c.buf.Release()
		}
	}
	l.pieces = nil
}
