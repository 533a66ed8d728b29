package agent

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestSchedulerTakesCallersInTurn: with the device busy, a caller with
// ten calls waiting and another with one: the other's call runs second,
// not eleventh.
func TestSchedulerTakesCallersInTurn(t *testing.T) {
	s := newScheduler(1, nil)
	hold := make(chan struct{})
	var calls callOrder
	calls.wg.Add(1)
	s.submitPlain("flood", func(release func()) {
		defer calls.wg.Done()
		<-hold
		release()
	})
	for range 10 {
		s.submitPlain("flood", calls.call("flood", true))
	}
	s.submitPlain("victim", calls.call("victim", true))
	close(hold)
	calls.wg.Wait()
	if order := calls.order(); slices.Index(order, "victim") != 1 {
		t.Errorf("the victim's call ran %d of %d: %v", slices.Index(order, "victim")+1, len(order), order)
	}
}

// TestSchedulerReleaseOnDeadline: a call abandoned at its deadline gives
// its turn to the next at once, though it never returns.
func TestSchedulerReleaseOnDeadline(t *testing.T) {
	s := newScheduler(1, nil)
	stuck := make(chan struct{})
	defer close(stuck)
	ran := make(chan struct{})
	s.submitPlain("a", func(release func()) {
		time.AfterFunc(10*time.Millisecond, release) // the deadline
		<-stuck
		release() // again, when the call returns at last: no effect
	})
	s.submitPlain("b", func(release func()) {
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
	s.submitPlain("flood", flood)
	s.submitPlain("flood", flood)
	waitFor(t, func() bool { return running.Load() == 2 })
	close(hold)
	wg.Wait()

	shared.Store(true)
	hold = make(chan struct{})
	most.Store(0)
	wg.Add(10)
	for range 10 {
		s.submitPlain("flood", flood)
	}
	waitFor(t, func() bool { return running.Load() == 1 })
	ran := make(chan struct{})
	s.submitPlain("victim", func(release func()) {
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
	var calls callOrder
	calls.wg.Add(1)
	s.submitPlain("a", func(func()) {
		defer calls.wg.Done()
		<-hold
	})
	s.submitPlain("a", calls.call("a", false))
	s.submitPlain("a", calls.call("a", false))
	s.submitPlain("b", calls.call("b", false))
	before := runtime.NumGoroutine()
	close(hold)
	done := make(chan struct{})
	go func() {
		calls.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the calls behind one that returned never ran: %v", calls.order())
	}
	if order, want := calls.order(), []string{"a", "b", "a"}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if n := runtime.NumGoroutine(); n > before+1 { // the waiter above
		t.Errorf("%d goroutines after the chain, %d before it", n, before)
	}
}

// callOrder records the order in which calls ran; wg counts the calls
// not run yet.
type callOrder struct {
	mu    sync.Mutex
	names []string
	wg    sync.WaitGroup
}

// call returns a call that records name and, with release, gives its
// turn up itself.
func (c *callOrder) call(name string, release bool) func(func()) {
	c.wg.Add(1)
	return func(rel func()) {
		defer c.wg.Done()
		c.mu.Lock()
		c.names = append(c.names, name)
		c.mu.Unlock()
		if release {
			rel()
		}
	}
}

func (c *callOrder) order() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.names)
}

// submitPlain submits a job with nothing left to do after its turn.
func (s *scheduler) submitPlain(key any, run func(release func())) {
	s.submit(key, func(release func()) func() {
		run(release)
		return nil
	})
}

// TestDeviceReplyHoldsNoTurn: a one-shot whose reply waits (its client
// does not read, so the write blocks) holds no turn of the device's:
// with one slot, as a TPM has, another caller's call runs meanwhile.
// The turn passing only after the reply let one client that never reads
// keep the device from every caller for good, past every deadline.
func TestDeviceReplyHoldsNoTurn(t *testing.T) {
	d := &device{timeout: 5 * time.Second, log: slog.New(slog.DiscardHandler), oneShots: newScheduler(1, nil)}
	deaf := make(chan struct{})
	defer close(deaf)
	replying := make(chan struct{})
	deafCaller := providers.WithBudget(context.Background(), providers.NewBudget(1<<20, nil, "test"))
	d.startFair(deafCaller, func(context.Context) error { return nil }, func(error) {
		close(replying)
		<-deaf // the write to a peer that never reads
	}, nil)
	<-replying
	ran := make(chan error, 1)
	other := providers.WithBudget(context.Background(), providers.NewBudget(1<<20, nil, "test"))
	d.startFair(other, func(context.Context) error { return nil }, func(err error) { ran <- err }, nil)
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("the other caller's call: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a call waited for another caller's reply to be written")
	}
}
