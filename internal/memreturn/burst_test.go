package memreturn

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// TestBurstTightensHeadroom: once a collection finds the live heap past
// BurstLive, the collector's headroom is cut; once one finds it small
// again, it is put back.
func TestBurstTightensHeadroom(t *testing.T) {
	t.Setenv("GOGC", "") // the operator's setting, which this test is not about
	TightenDuringBursts()
	waitFor := func(on bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); InBurst() != on; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("burst %v after collections, want %v", InBurst(), on)
			}
			runtime.GC()
		}
	}
	waitFor(false)
	for range 2 * BurstLive / (1 << 20) {
		sink = append(sink, make([]byte, 1<<20))
	}
	waitFor(true)
	if p := debug.SetGCPercent(BurstGCPercent); p != BurstGCPercent {
		t.Errorf("GC percent %d during a burst, want %d", p, BurstGCPercent)
	}
	sink = nil
	waitFor(false)
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("GC percent %d after a burst, want 100", p)
	}
}
