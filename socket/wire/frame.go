package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Framing errors. After ErrEmptyFrame the stream is still in step and the
// next frame can be read; after ErrFrameTooLarge it is not, because the
// body was not read.
var (
	ErrEmptyFrame    = errors.New("zero-length frame")
	ErrFrameTooLarge = errors.New("frame too large")
)

// firstChunk is the most memory a large frame takes before its bytes
// arrive: a peer that announces a frame and sends little of it makes the
// reader hold only what it sent, rounded up to a doubling of this.
const firstChunk = 64 << 10

// FrameReader reads frames from a buffered stream. A frame that fits in the
// buffer is returned in place, without a copy; a larger one is read into a
// scratch buffer that is reused. The scratch buffer is charged to the
// reader's budget (SetBudget) while the reader holds it, as the frame's
// bytes arrive, not when its length is announced. A FrameReader is not
// safe for concurrent use.
type FrameReader struct {
	r         *bufio.Reader
	max       int
	budget    *providers.Budget
	mapped    bool // new scratch buffers from frame.Alloc, when it can
	scratch   []byte
	inMapping bool // scratch is from frame.Alloc or its pool
	charged   int  // of budget, for scratch
	peeked    int  // bytes of the previous frame still to discard
	inScratch bool // the last frame is in scratch, not in the bufio buffer
	midFrame  bool // an error came in the middle of a large frame
}

// NewFrameReader reads frames of at most max body bytes from r.
func NewFrameReader(r *bufio.Reader, max int) *FrameReader {
	return &FrameReader{r: r, max: max}
}

// SetMax changes the largest body accepted, as agreed in the handshake.
func (f *FrameReader) SetMax(max int) { f.max = max }

// UseMappedMemory reads large frames from now on into memory outside the
// Go heap, from frame.Alloc or its pool (or on the heap when no mapping
// can be had), whose pages are resident only once the bytes arrive and
// go back whole when let go. The reader's owner must call Free when done
// with it, or its last buffer is never given back. For a server, whose
// callers choose what it holds.
func (f *FrameReader) UseMappedMemory() { f.mapped = true }

// SetBudget charges the scratch buffer to b from now on. A large frame
// that b cannot hold fails with an error wrapping providers.ErrLimit,
// after which the stream is out of step.
func (f *FrameReader) SetBudget(b *providers.Budget) { f.budget = b }

// forgetScratch releases the scratch buffer's charge and forgets it,
// for a buffer that has gone back or to a new holder.
func (f *FrameReader) forgetScratch() {
	f.budget.Release(f.charged)
	f.scratch, f.charged, f.inMapping = nil, 0, false
}

// Buffered is how many bytes are read but not yet returned, beyond the
// current frame.
func (f *FrameReader) Buffered() int { return f.r.Buffered() - f.peeked }

// Whole reports whether the next frame is in the buffer whole, so that
// Next returns it without reading from the stream. A server flushes its
// replies when it is not, because then the next read may block: a client
// whose next frame arrives in pieces gets the replies to those before it
// meanwhile.
func (f *FrameReader) Whole() bool {
	n := f.Buffered()
	if n < 4 {
		return false
	}
	hdr, _ := f.r.Peek(f.peeked + 4)
	size := int(binary.BigEndian.Uint32(hdr[f.peeked:]))
	return 4+size <= n
}

// Next returns the next frame's body (type, request ID, payload). The body
// is valid until the following call.
func (f *FrameReader) Next() ([]byte, error) {
	if f.peeked > 0 {
		f.r.Discard(f.peeked)
		f.peeked = 0
	}
	hdr, err := f.r.Peek(4)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr))
	switch {
	case n == 0:
		f.r.Discard(4)
		return nil, ErrEmptyFrame
	case n > f.max:
		f.r.Discard(4)
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrFrameTooLarge, n, f.max)
	}
	f.inScratch = false
	if 4+n <= f.r.Size() {
		// Peeked whole, header and all: an error here (a deadline, say)
		// leaves the stream where it was.
		frame, err := f.r.Peek(4 + n)
		if err != nil {
			return nil, unexpected(err)
		}
		f.peeked = 4 + n
		return frame[4:], nil
	}
	f.r.Discard(4)
	f.inScratch, f.midFrame = true, true
	body, err := f.readBody(n)
	if err != nil {
		return nil, err
	}
	f.midFrame = false
	return body, nil
}

// readBody reads a body of n bytes into the scratch buffer. A new
// scratch buffer has room for n bytes and is charged to the budget as
// they arrive, by doubling from firstChunk, so a peer that announces a
// frame and sends little of it is charged for little; with
// UseMappedMemory, its pages take memory only as the bytes arrive too.
func (f *FrameReader) readBody(n int) ([]byte, error) {
	if cap(f.scratch) < n {
		f.dropScratch()
		f.newScratch(n)
	}
	body := f.scratch[:0]
	for len(body) < n {
		if len(body) >= f.charged {
			size := min(cap(f.scratch), max(2*f.charged, firstChunk))
			if err := f.budget.Charge(size - f.charged); err != nil {
				return nil, err
			}
			f.charged = size
		}
		m, err := f.r.Read(body[len(body):min(f.charged, n)])
		body = body[:len(body)+m]
		if err != nil && len(body) < n {
			return nil, unexpected(err)
		}
	}
	f.scratch = body // what Take hands over
	return body, nil
}

// newScratch makes a scratch buffer for n bytes: a pooled one, charged
// whole since its pages may all be resident, if the budget spares that,
// else a new one charged as the bytes arrive; mapped if the reader
// uses mapped memory and a mapping can be had, else on the heap.
func (f *FrameReader) newScratch(n int) {
	if f.mapped {
		if b := frame.Pooled(n); b != nil {
			if f.budget.Charge(cap(b)) == nil {
				f.scratch, f.charged, f.inMapping = b, cap(b), true
				return
			}
			frame.Recycle(b)
		}
		if b, err := frame.Alloc(n); err == nil {
			f.scratch, f.inMapping = b, true
			return
		}
	}
	f.scratch = make([]byte, n)
}

// dropScratch gives the scratch buffer back and releases its charge.
func (f *FrameReader) dropScratch() {
	if f.inMapping {
		frame.Recycle(f.scratch)
	}
	f.forgetScratch()
}

// Grow gives the reader a buffer of size bytes over src in place of its
// own, if it has nothing buffered that it has not returned (Buffered is
// zero), and reports whether it did. The frame returned last stays valid:
// it lies in the old buffer, which nothing reads into any more. A server
// starts a connection with a buffer just large enough for HELLO, so that a
// connection that never says it costs next to nothing, and grows it at the
// first moment nothing is left unread.
func (f *FrameReader) Grow(src io.Reader, size int) bool {
	if f.Buffered() != 0 {
		return false
	}
	f.r = bufio.NewReaderSize(src, size)
	f.peeked = 0
	return true
}

// MidFrame reports whether the last error left a frame half read, after
// which the stream is out of step. Errors on frames that fit the buffer
// never do.
func (f *FrameReader) MidFrame() bool { return f.midFrame }

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Release gives the scratch buffer back to the pool, for a reader about
// to go idle: a connection that once streamed should not keep a megabyte.
func (f *FrameReader) Release() {
	if !f.inScratch {
		f.dropScratch()
	}
}

// Free gives the scratch buffer back whatever it holds, for a reader
// that will read no more, once nothing reads the last frame returned.
func (f *FrameReader) Free() {
	f.dropScratch()
	f.inScratch = false
}

// Take hands over the last frame's body, if it was read into the scratch
// buffer, so that a caller keeping it past the next Next need not copy it:
// the caller holds the one reference and releases it when done, which
// returns the memory to the pool. It returns nil when the body lies in the
// shared read buffer and must be copied.
func (f *FrameReader) Take() *frame.Buffer {
	if !f.inScratch {
		return nil
	}
	b, mapped := f.scratch, f.inMapping
	f.forgetScratch()
	f.inScratch = false
	if !mapped {
		return frame.New(b, nil)
	}
	return frame.Mapping(b)
}
