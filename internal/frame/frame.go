// Package frame is the one way a large request's bytes change hands on
// their way from the socket to a provider and back: a reference-counted
// [Buffer]. The socket reads a large frame into a pooled buffer and
// hands it on; whoever keeps the bytes past the call that passed them
// (a PKCS#11 context's copy log, a device call past its deadline) holds
// a reference of its own, and the last [Buffer.Release] returns the
// memory to the pool for the next frame. Streaming then reuses the same
// pages instead of faulting in fresh ones for every frame.
//
// A Buffer's reference count is safe for concurrent use; its bytes are
// never written once handed on, so any holder may read them.
package frame

import (
	"sync"
	"sync/atomic"
)

// Buffer is a byte slice with owners. It starts with one reference,
// its creator's; Retain adds one and Release drops one. Each holder
// releases exactly once the reference it took, and must not touch the
// bytes afterwards.
type Buffer struct {
	b    []byte
	free func([]byte)
	refs atomic.Int32
}

// New wraps b, which the caller gives up, in a Buffer holding one
// reference. The last Release gives b to free, if not nil: Recycle, for
// memory that goes back to the pool.
func New(b []byte, free func([]byte)) *Buffer {
	buf := &Buffer{b: b, free: free}
	buf.refs.Store(1)
	return buf
}

// Bytes returns the buffer's bytes, valid while the caller holds a
// reference; nil once the last reference is released.
func (b *Buffer) Bytes() []byte { return b.b }

// Held reports whether any reference is held. It is for checks that
// the bytes came back; it gives no right to touch them.
func (b *Buffer) Held() bool { return b.refs.Load() > 0 }

// Retain adds a reference, for a holder that keeps the bytes past the
// call that passed them, and returns b. Retain and Release of a nil
// Buffer do nothing, for bytes that no Buffer holds.
func (b *Buffer) Retain() *Buffer {
	if b == nil {
		return nil
	}
	if b.refs.Add(1) <= 1 {
		panic("frame: Retain of a released buffer")
	}
	return b
}

// Release drops a reference. The last one returns the bytes to the pool.
func (b *Buffer) Release() {
	if b == nil {
		return
	}
	switch n := b.refs.Add(-1); {
	case n == 0:
		if b.free != nil {
			b.free(b.b)
		}
		b.b = nil
	case n < 0:
		panic("frame: Release of a released buffer")
	}
}

// pool keeps the memory of large frames: zeroing a fresh buffer for
// every frame costs as much as copying it.
var pool sync.Pool

// Pooled returns a recycled slice of n bytes, or nil if the pool has
// none of about that size: at least n, and at most twice n or twice
// minPooled, whichever is more. A larger one goes back: memory is
// charged to a caller, and kept by whoever holds a frame, by what a frame
// needs, so a small frame must not travel in a megabyte another frame
// left behind.
func Pooled(n int) []byte {
	b, ok := pool.Get().(*[]byte)
	if !ok || cap(*b) < n {
		return nil
	}
	if cap(*b) > 2*max(n, minPooled) {
		pool.Put(b)
		return nil
	}
	return (*b)[:n]
}

// minPooled is the size below which Pooled does not tell buffers apart.
const minPooled = 64 << 10

// Recycle returns b to the pool, for a reader's own buffer that no
// Buffer wraps. The caller must not use b afterwards.
func Recycle(b []byte) {
	if cap(b) == 0 {
		return
	}
	b = b[:0]
	pool.Put(&b)
}
