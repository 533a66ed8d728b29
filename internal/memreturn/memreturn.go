// Package memreturn gives the memory a burst of work left behind back to
// the operating system soon after the burst ends.
//
// The Go runtime keeps the heap it grew and returns pages to the system
// only gradually (its background scavenger works over minutes), so an
// agent that one caller made hold hundreds of megabytes for a moment would
// keep them resident long after that caller left. A [Returner] is told
// when memory has just been let go ([Returner.Poke]: the agent pokes it
// whenever a session closes) and then, once things have settled, unmaps
// the large frames pooled for reuse (frame.Trim), forces a collection and
// returns the free heap with debug.FreeOSMemory, if enough is free to be
// worth it.
//
// While a burst lasts, [TightenDuringBursts] keeps the heap near what is
// live, so that less is left to return: see burst.go.
//
// A forced collection costs CPU in proportion to the live heap, and a
// caller can make memory be let go as often as it likes (by connecting and
// disconnecting), so a Returner looks at most once per [Interval], however
// often it is poked: a caller can make the agent spend at most two
// collections per Interval on it.
//
// The zero Returner is ready to use. Its methods are safe for concurrent
// use.
package memreturn

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/frame"
)

const (
	// Interval is the least time between two looks.
	Interval = 5 * time.Second
	// Settle is how long a Returner waits after a poke before looking:
	// connections that close together (a caller leaving with hundreds)
	// are one burst, returned once.
	Settle = 500 * time.Millisecond
	// Worth is the least free memory that a return is made for. At 2
	// MiB, the look after 128 connections closed could find too little
	// and end the chain before the rest was let go: RSS ended 0.35 MiB
	// higher (hmac-bench -hostile, connections, four runs each).
	Worth = 512 << 10
)

// Returner returns memory left free after a burst; see the package doc.
type Returner struct {
	mu      sync.Mutex
	last    time.Time // when it last looked
	pending bool      // a look is scheduled

	looks, returned int // for tests
}

// Poke says memory has just been let go. A look follows within Settle, or
// when Interval has passed since the last look, whichever is later; pokes
// meanwhile are folded into it.
func (r *Returner) Poke() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scheduleLocked()
}

func (r *Returner) scheduleLocked() {
	if r.pending {
		return
	}
	r.pending = true
	delay := max(Settle, time.Until(r.last.Add(Interval)))
	time.AfterFunc(delay, r.look)
}

// look collects, and returns memory if enough is free. Garbage cannot be
// told from live data before a collection (the heap's figures count both
// as in use), so the collection comes first; FreeOSMemory then collects
// once more, which also drops what a sync.Pool kept across the first.
func (r *Returner) look() {
	// A poke from now on may be for memory this look misses: it
	// schedules the next.
	r.mu.Lock()
	r.pending = false
	r.last = time.Now()
	r.looks++
	r.mu.Unlock()
	frame.Trim()
	runtime.GC()
	if Free() < Worth {
		return
	}
	debug.FreeOSMemory()
	// A burst may go on letting memory go after the poke that brought
	// this look (a connection's buffers outlive its session): look once
	// more an Interval from now. Each look that finds nothing worth
	// returning ends the chain.
	r.mu.Lock()
	r.returned++
	r.scheduleLocked()
	r.mu.Unlock()
}

// Counts says how many times r has looked, and returned memory.
func (r *Returner) Counts() (looks, returns int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.looks, r.returned
}

var freeSample = []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}

var freeMu sync.Mutex

// Free is the heap memory that is free and not yet returned to the
// system.
func Free() uint64 {
	freeMu.Lock()
	defer freeMu.Unlock()
	metrics.Read(freeSample)
	if freeSample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return freeSample[0].Value.Uint64()
}
