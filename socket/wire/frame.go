package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Framing errors. After ErrEmptyFrame the stream is still in step and the
// next frame can be read; after ErrFrameTooLarge it is not, because the
// body was not read.
var (
	ErrEmptyFrame    = errors.New("zero-length frame")
	ErrFrameTooLarge = errors.New("frame too large")
)

// FrameReader reads frames from a buffered stream. A frame that fits in the
// buffer is returned in place, without a copy; a larger one is read into a
// scratch buffer that is reused.
type FrameReader struct {
	r         *bufio.Reader
	max       int
	scratch   []byte
	peeked    int  // bytes of the previous frame still to discard
	inScratch bool // the last frame is in scratch, not in the bufio buffer
	midFrame  bool // an error came in the middle of a large frame
}

// NewFrameReader reads frames of at most max body bytes from r.
func NewFrameReader(r *bufio.Reader, max int) *FrameReader {
	return &FrameReader{r: r, max: max}
}

// Buffered is how many bytes are read but not yet returned, beyond the
// current frame. A server flushes its replies when this is zero, because
// then the next read may block.
func (f *FrameReader) Buffered() int { return f.r.Buffered() - f.peeked }

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
	if cap(f.scratch) < n {
		f.scratch = getBuffer(n)
	}
	body := f.scratch[:n]
	if _, err := io.ReadFull(f.r, body); err != nil {
		return nil, unexpected(err)
	}
	f.midFrame = false
	return body, nil
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
	if f.scratch != nil && !f.inScratch {
		Recycle(f.scratch)
		f.scratch = nil
	}
}

// Take hands over the last frame's body, if it was read into the scratch
// buffer, so that a caller keeping it past the next Next need not copy it;
// the caller gives it back with Recycle when done. It returns nil when the
// body lies in the shared read buffer and must be copied.
func (f *FrameReader) Take() []byte {
	if !f.inScratch {
		return nil
	}
	b := f.scratch
	f.scratch, f.inScratch = nil, false
	return b
}

// buffers recycles large frame bodies: streaming hands one over per
// frame, and zeroing a fresh one each time costs as much as copying.
var buffers sync.Pool

func getBuffer(n int) []byte {
	if b, ok := buffers.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:n]
	}
	return make([]byte, n)
}

// Recycle returns a body obtained from Take. The caller must not use it
// afterwards.
func Recycle(b []byte) {
	b = b[:0]
	buffers.Put(&b)
}
