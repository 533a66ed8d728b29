// Package memreturn gives the memory a burst of work left behind back to
// the operating system soon after the burst ends.
//
// The Go runtime keeps the heap it grew and returns pages to the system
// only gradually (its background scavenger works over minutes), so an
// agent that one caller made hold hundreds of megabytes for a moment would
// keep them resident long after that caller left. A [Returner] is told
// when memory has just been let go ([Returner.Poke]: a session closed, a
// caller's data was freed) and then, once things have settled, forces a
// collection and returns the free heap with debug.FreeOSMemory, but only
// if enough is free to be worth it.
//
// A forced collection costs CPU in proportion to the live heap, and a
// caller can make memory be let go as often as it likes (by connecting and
// disconnecting), so a Returner returns memory at most once per
// [Interval], however often it is poked: a caller can make the agent spend
// at most one collection per Interval on it.
//
// The zero Returner is ready to use. Its methods are safe for concurrent
// use.
package memreturn

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

const (
	// Interval is the least time between two returns.
	Interval = 5 * time.Second
	// Settle is how long a Returner waits after a poke before looking:
	// connections that close together (a caller leaving with hundreds)
	// are one burst, returned once.
	Settle = 500 * time.Millisecond
	// Worth is the least memory, free or garbage, that a return is made
	// for: below it, a collection would cost more than it gives back.
	Worth = 2 << 20
)

// Returner returns memory left free after a burst; see the package doc.
type Returner struct {
	mu      sync.Mutex
	last    time.Time // when memory was last returned
	pending bool      // a look is scheduled

	// returned counts returns made, for tests.
	returned int
}

// Poke says memory has just been let go. A look follows within Settle, or
// when Interval has passed since the last return, whichever is later;
// pokes meanwhile are folded into it.
func (r *Returner) Poke() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending {
		return
	}
	r.pending = true
	delay := max(Settle, time.Until(r.last.Add(Interval)))
	time.AfterFunc(delay, r.look)
}

// look returns memory if enough is free or garbage.
func (r *Returner) look() {
	worth := Reclaimable() >= Worth
	if worth {
		debug.FreeOSMemory()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = false
	if worth {
		r.last = time.Now()
		r.returned++
	}
}

// Returned is how many times r has returned memory.
func (r *Returner) Returned() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.returned
}

var samples = []metrics.Sample{
	{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
	{Name: "/memory/classes/heap/objects:bytes"}, // live and not yet swept garbage
	{Name: "/gc/heap/live:bytes"},                // live at the last collection
}

var samplesMu sync.Mutex

// Reclaimable estimates the heap memory a collection and a return would
// give back to the system: what is free and not yet returned, plus what
// objects hold beyond what was live at the last collection (garbage, or
// growth since, which a collection will find live and keep).
func Reclaimable() uint64 {
	samplesMu.Lock()
	defer samplesMu.Unlock()
	metrics.Read(samples)
	var v [3]uint64
	for i, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	free, objects, live := v[0], v[1], v[2]
	n := free
	if objects > live {
		n += objects - live
	}
	return n
}
