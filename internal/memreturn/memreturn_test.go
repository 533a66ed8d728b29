package memreturn

import (
	"runtime"
	"testing"
	"time"
)

var sink [][]byte

// TestPokesFoldedAndRateLimited: however often a Returner is poked, it
// looks at most once per Interval, and a look returns the memory a burst
// left free.
func TestPokesFoldedAndRateLimited(t *testing.T) {
	var r Returner
	// A burst: 64 MiB that becomes garbage.
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	start := time.Now()
	for time.Since(start) < Settle+Interval/2 {
		r.Poke() // a caller connecting and leaving as fast as it can
		time.Sleep(time.Millisecond)
	}
	looks, returns := r.Counts()
	if looks != 1 || returns != 1 {
		t.Fatalf("%d looks and %d returns within Settle+Interval/2 of a burst and a stream of pokes, want 1 and 1", looks, returns)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if idle := ms.HeapIdle - ms.HeapReleased; idle >= 2*Worth {
		t.Errorf("%d bytes of the heap free and not returned after a return", idle)
	}
	// The pokes since make one look more, an Interval after the first.
	time.Sleep(Interval)
	if looks, _ := r.Counts(); looks != 2 {
		t.Errorf("%d looks after pokes for 1.5 Intervals, want 2", looks)
	}
}
