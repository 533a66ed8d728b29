package socket

import "sync"

// RequestMemory is what a request running outside its connection's reader
// holds beside its data, measured on Linux amd64: its message, the queue
// entry or closure that runs it, and its share of the goroutines that run
// it (a device call's, a deadline's, a context queue's), about 5 KiB. It
// is charged to the uid's budget with the data, so that a uid's requests
// in flight to a stalled device are bounded by max_bytes_per_uid, not by
// max_in_flight on each of its connections.
const RequestMemory = 5 << 10

// backlog bounds the request data one connection has handed to goroutines
// other than its reader and that they have not finished with: what a
// client streaming to a slow device makes the agent hold. Without it the
// bound was max_in_flight frames, 256 MiB at the default 1 MiB frame.
//
// When the backlog is full the reader stops reading, and it resumes only
// once half has drained: woken for every request that finished, the reader
// would cost each finishing goroutine a wake-up per frame, where in
// half-batches it reads many frames per wake-up.
//
// Its methods are safe for concurrent use.
type backlog struct {
	mu      sync.Mutex
	drained sync.Cond // signalled when a waiting reader may go on
	n, max  int
	waiting bool

	finished    uint64 // requests done so far
	waitingDone bool   // the reader waits for the next request done
}

func newBacklog(max int) *backlog {
	b := &backlog{max: max}
	b.drained.L = &b.mu
	return b
}

// add counts n more bytes. When they would pass the bound it calls
// beforeWait, then waits until half the backlog has drained. A request is
// always admitted into an empty backlog, however large, so the reader
// never waits for nothing.
func (b *backlog) add(n int, beforeWait func() error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.full(n) {
		b.mu.Unlock()
		beforeWait() // it writes to the socket: not under mu; a failed write shows on the next
		b.mu.Lock()
		for b.full(n) {
			b.waiting = true
			b.drained.Wait()
		}
	}
	b.n += n
}

func (b *backlog) full(n int) bool { return b.n > 0 && b.n+n > b.max }

// done counts n bytes as finished with, and wakes the reader once half
// the bound is free.
func (b *backlog) done(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n -= n
	b.finished++
	if b.waiting && b.n <= b.max/2 || b.waitingDone {
		b.waiting, b.waitingDone = false, false
		b.drained.Signal()
	}
}

// awaitDone waits until one more request is done, while others reports
// that requests besides the caller's are in flight; it returns false at
// once, without waiting, when none are.
func (b *backlog) awaitDone(others func() bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !others() {
		return false
	}
	for seen := b.finished; b.finished == seen; {
		b.waitingDone = true
		b.drained.Wait()
	}
	return true
}

// bytes is the data held now.
func (b *backlog) bytes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}
