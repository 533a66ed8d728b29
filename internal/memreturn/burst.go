package memreturn

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// The collector lets the heap grow to twice what is live (GOGC=100)
// before it collects, which costs an idle agent's megabyte of live heap
// nothing. A caller that makes the agent hold ten megabytes of contexts
// would grow the heap to twenty, and the runtime keeps what it built to
// manage the largest heap it had (span structures, mark bits: some
// megabytes for a few tens) for the life of the process, after the
// caller has left. So while the live heap is large, the headroom is cut
// to BurstGCPercent, and put back once the live heap is small again.
// Collections come more often meanwhile: four times as often for a
// quarter of the headroom, and only during a burst.
const (
	// BurstLive is the live heap from which a burst is on: several times
	// an idle agent's.
	BurstLive = 8 << 20
	// BurstGCPercent is the collector's headroom during a burst, in
	// percent of the live heap.
	BurstGCPercent = 25
	// normalGCPercent is the headroom outside bursts: GOGC's default,
	// since an operator's GOGC turns the watch off.
	normalGCPercent = 100
)

var burst struct {
	once sync.Once
	mu   sync.Mutex
	on   bool
	live []metrics.Sample
}

// sentinel is an object made only to be collected: its cleanup runs
// once per collection that finds it unreachable, and makes the next.
// Large enough not to share a tiny-allocator block with live objects.
type sentinel struct{ _ [32]byte }

// TightenDuringBursts starts watching the live heap after each
// collection and cuts the collector's headroom while it is BurstLive or
// more. It does nothing if GOGC is set: the operator's choice stands.
// Calls after the first do nothing.
func TightenDuringBursts() {
	if os.Getenv("GOGC") != "" {
		return
	}
	burst.once.Do(func() {
		burst.live = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		armBurstWatch()
	})
}

func armBurstWatch() {
	runtime.AddCleanup(&sentinel{}, func(struct{}) {
		afterCollection()
		armBurstWatch()
	}, struct{}{})
}

// afterCollection starts or ends a burst from the live heap the last
// collection found. A burst ends at half BurstLive, so that a live heap
// near the line does not switch at every collection.
func afterCollection() {
	burst.mu.Lock()
	defer burst.mu.Unlock()
	metrics.Read(burst.live)
	if burst.live[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	live := burst.live[0].Value.Uint64()
	switch {
	case !burst.on && live >= BurstLive:
		burst.on = true
		debug.SetGCPercent(BurstGCPercent)
	case burst.on && live < BurstLive/2:
		burst.on = false
		debug.SetGCPercent(normalGCPercent)
	}
}

// InBurst reports whether the headroom is cut now.
func InBurst() bool {
	burst.mu.Lock()
	defer burst.mu.Unlock()
	return burst.on
}
