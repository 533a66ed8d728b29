package agent

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSchedulerTakesCallersInTurn: with the device busy, a caller with
// ten calls waiting and another with one: the other's call runs second,
// not eleventh.
func TestSchedulerTakesCallersInTurn(t *testing.T) {
	s := newScheduler(1, nil)
	hold := make(chan struct{})
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	record := func(name string) func(func()) {
		wg.Add(1)
		return func(release func()) {
			defer wg.Done()
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			release()
		}
	}
	wg.Add(1)
	s.submit("flood", func(release func()) {
		defer wg.Done()
		<-hold
		release()
	})
	for range 10 {
		s.submit("flood", record("flood"))
	}
	s.submit("victim", record("victim"))
	close(hold)
	wg.Wait()
	if i := slices.Index(order, "victim"); i != 1 {
		t.Errorf("the victim's call ran %d of %d: %v", i+1, len(order), order)
	}
}

// TestSchedulerReleaseOnDeadline: a call abandoned at its deadline gives
// its turn to the next at once, though it never returns.
func TestSchedulerReleaseOnDeadline(t *testing.T) {
	s := newScheduler(1, nil)
	stuck := make(chan struct{})
	defer close(stuck)
	ran := make(chan struct{})
	s.submit("a", func(release func()) {
		time.AfterFunc(10*time.Millisecond, release) // the deadline
		<-stuck
		release() // again, when the call returns at last: no effect
	})
	s.submit("b", func(release func()) {
		close(ran)
		release()
	})
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("a call behind one past its deadline never ran")
	}
}

// TestSchedulerKeepsASlotWhileShared: with two slots and another uid
// connected, a caller with calls waiting runs one at a time, and another
// caller's call starts at once beside it instead of waiting for one of
// the flood's to finish; alone, the caller has both slots.
func TestSchedulerKeepsASlotWhileShared(t *testing.T) {
	var shared atomic.Bool
	s := newScheduler(2, shared.Load)
	hold := make(chan struct{})
	var running, most atomic.Int32
	var wg sync.WaitGroup
	flood := func(release func()) {
		defer wg.Done()
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-hold
		running.Add(-1)
		release()
	}

	// Alone: both slots.
	wg.Add(2)
	s.submit("flood", flood)
	s.submit("flood", flood)
	waitFor(t, func() bool { return running.Load() == 2 })
	close(hold)
	wg.Wait()

	shared.Store(true)
	hold = make(chan struct{})
	most.Store(0)
	wg.Add(10)
	for range 10 {
		s.submit("flood", flood)
	}
	waitFor(t, func() bool { return running.Load() == 1 })
	ran := make(chan struct{})
	s.submit("victim", func(release func()) {
		close(ran)
		release()
	})
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the other caller's call waited for the flood's")
	}
	close(hold)
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Errorf("while shared, the flood ran %d calls at once, want 1", m)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatal("condition not reached in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCallersSharedWithTwoUIDs: the devices' schedulers hold a slot back
// exactly while sessions of more than one uid are open.
func TestCallersSharedWithTwoUIDs(t *testing.T) {
	var cs callers
	a1 := cs.join(1, 0)
	a2 := cs.join(1, 0)
	if cs.shared.Load() {
		t.Fatal("shared with one uid's two sessions")
	}
	b := cs.join(2, 0)
	if !cs.shared.Load() {
		t.Fatal("not shared with two uids")
	}
	cs.leave(a1)
	if !cs.shared.Load() {
		t.Fatal("not shared with uid 1's second session still open")
	}
	cs.leave(a2)
	if cs.shared.Load() {
		t.Fatal("shared with one uid left")
	}
	cs.leave(b)
}

// TestSchedulerTurnPassesWhenRunReturns: a call that returns passes its
// turn on without calling release, to the calls waiting, callers in turn,
// all on the goroutine that ran the first.
func TestSchedulerTurnPassesWhenRunReturns(t *testing.T) {
	s := newScheduler(1, nil)
	hold := make(chan struct{})
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	record := func(name string) func(func()) {
		wg.Add(1)
		return func(func()) {
			defer wg.Done()
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		}
	}
	wg.Add(1)
	s.submit("a", func(func()) {
		defer wg.Done()
		<-hold
	})
	s.submit("a", record("a"))
	s.submit("a", record("a"))
	s.submit("b", record("b"))
	before := runtime.NumGoroutine()
	close(hold)
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the calls behind one that returned never ran: %v", order)
	}
	if want := []string{"a", "b", "a"}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if n := runtime.NumGoroutine(); n > before+1 { // the waiter above
		t.Errorf("%d goroutines after the chain, %d before it", n, before)
	}
}
