// Package frame is the one way a large request's bytes change hands on
// their way from the socket to a provider and back: a reference-counted
// [Buffer]. The socket reads a large frame into a pooled buffer and
// hands it on; whoever keeps the bytes past the call that passed them
// (a PKCS#11 context's copy log, a device call past its deadline) holds
// a reference of its own, and the last [Buffer.Release] returns the
// memory to the pool for the next frame. Streaming then reuses the same
// pages instead of faulting in fresh ones for every frame.
//
// The memory of large frames lies outside the Go heap (see [Alloc]), so
// that what one caller made the agent hold is given back whole when it
// leaves.
//
// A Buffer's reference count is safe for concurrent use; its bytes are
// never written once handed on, so any holder may read them. Alloc,
// Pooled, Recycle and Trim are safe for concurrent use.
package frame

import "sync/atomic"

// Buffer is a byte slice with owners. It starts with one reference,
// its creator's; Retain adds one and Release drops one. Each holder
// releases exactly once the reference it took, and must not touch the
// bytes afterwards.
type Buffer struct {
	b    []byte
	free func([]byte)
	size int
	refs atomic.Int32
}

// New wraps b, which the caller gives up, in a Buffer holding one
// reference. The last Release gives b to free, if not nil.
func New(b []byte, free func([]byte)) *Buffer {
	buf := &Buffer{b: b, free: free, size: cap(b)}
	buf.refs.Store(1)
	return buf
}

// Mapping wraps b, from Alloc or Pooled, as New does; the last Release
// recycles it.
func Mapping(b []byte) *Buffer {
	buf := New(b, Recycle)
	buf.size = Pages(cap(b))
	return buf
}

// Size is the memory the buffer holds, which may be more than its bytes:
// a pooled mapping is up to twice the frame it holds, in whole pages. A
// holder that charges a caller for keeping the buffer charges this.
func (b *Buffer) Size() int { return b.size }

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
