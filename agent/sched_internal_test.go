package agent

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// TestSchedulerTakesCallersInTurn: with the device busy, a caller with
// ten calls waiting and another with one: the other's call runs second,
// not eleventh.
func TestSchedulerTakesCallersInTurn(t *testing.T) {
	s := newScheduler(1)
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
	s := newScheduler(1)
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
