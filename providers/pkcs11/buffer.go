//go:build cgo

package pkcs11

import "github.com/hmac-agent/hmac-agent/internal/frame"

// inputBuffer is a context's input kept until it is signed with one
// C_Sign. A few bytes lie on the Go heap; from a page on, the input
// moves to a mapping of the provider's buffer size outside the heap
// (frame.Alloc), whose pages take memory as they are written. Thousands
// of contexts each buffering tens of kilobytes would otherwise grow the
// Go heap by as much, and the runtime keeps its bookkeeping for the
// largest heap it had for good (see internal/frame). Not safe for
// concurrent use.
type inputBuffer struct {
	b      []byte
	mapped bool // b is from frame.Alloc
}

// bytes is the input, valid until the next append or free.
func (ib *inputBuffer) bytes() []byte { return ib.b }

// append adds p. size is the provider's buffer size, which the input
// passes only in a context that may not keep a session (pool.keep): the
// mapping then doubles.
func (ib *inputBuffer) append(p []byte, size int) {
	n := len(ib.b) + len(p)
	if n >= frame.PageSize && (!ib.mapped || n > cap(ib.b)) {
		if mem, err := frame.Alloc(max(size, n, 2*cap(ib.b))); err == nil {
			k := copy(mem, ib.b)
			ib.free()
			ib.b, ib.mapped = mem[:k], true
		}
	}
	if ib.mapped && n > cap(ib.b) {
		// No mapping to be had: back to the heap rather than let
		// append leave the mapping behind.
		heap := append(make([]byte, 0, n), ib.b...)
		ib.free()
		ib.b = heap
	}
	ib.b = append(ib.b, p...)
}

// free zeroes the input and gives its memory back.
func (ib *inputBuffer) free() {
	clear(ib.b)
	if ib.mapped {
		frame.Recycle(ib.b)
	}
	ib.b, ib.mapped = nil, false
}

// held is the memory n bytes of input take, as charged to the caller:
// whole pages from a page on, where they lie outside the heap.
func held(n int) int {
	if n < frame.PageSize {
		return n
	}
	return frame.Pages(n)
}
