package fair

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
)

// Gate lets at most a number of holders in at once, and at most a smaller
// number of them for any one key (a caller's uid), and makes the rest
// wait in turn by key, so that work done on the agent's own CPUs is
// shared by callers, not by whoever sends most.
//
// It exists for two properties of the machine. The Go scheduler looks for
// sockets that became readable only when a processor (P) has no
// goroutine to run, or when its monitor finds the network unpolled for
// 10 ms: a caller that keeps every P busy (a reader per connection, each
// finding its next request already buffered) hides every other caller's
// request for up to 10 ms. And the kernel shares the CPUs among threads:
// a thread that has been busy serving one caller waits behind that
// caller's own processes, so another caller served on it waits too. With
// one key held to fewer slots than there are Ps, a P is left to poll the
// network, and another caller's request runs at once on a thread of its
// own instead of waiting for the busy one.
//
// A Gate is safe for concurrent use.
type Gate struct {
	mu     sync.Mutex
	slots  int
	perKey int // in force now: sharedPerKey while shared, else slots
	// sharedPerKey is one key's limit while the gate is shared (Share).
	sharedPerKey int
	shared       atomic.Bool
	in           int
	held         map[any]int
	waiting      Queue[*gateWaiter]
}

type gateWaiter struct{ ready chan struct{} }

var waiterPool = sync.Pool{New: func() any { return &gateWaiter{ready: make(chan struct{}, 1)} }}

// NewGate returns a gate for slots holders at once, at most perKey of
// them with one key; perKey <= 0 or above slots means slots.
func NewGate(slots, perKey int) *Gate {
	slots = max(1, slots)
	if perKey <= 0 || perKey > slots {
		perKey = slots
	}
	g := &Gate{slots: slots, perKey: perKey, sharedPerKey: perKey, held: make(map[any]int)}
	g.shared.Store(true)
	return g
}

// NewCPUGate returns the gate for work on the agent's CPUs: GOMAXPROCS
// slots, one fewer for any one key (at least one) while it is shared
// (Share). Unshared, it lets everyone in at once: a lone caller has the
// whole agent, and pays nothing for turns no one else waits for; the
// limits start as soon as another caller connects.
func NewCPUGate() *Gate {
	n := runtime.GOMAXPROCS(0)
	g := NewGate(n, n-1)
	g.Share(false)
	return g
}

// Share sets whether more than one key uses the gate: if so one key may
// hold sharedPerKey slots and the holders at most the gate's slots; if
// not, Enter never waits. Holders over a new limit keep their slots
// until they leave.
func (g *Gate) Share(shared bool) {
	g.mu.Lock()
	if g.shared.Load() == shared {
		g.mu.Unlock()
		return
	}
	g.shared.Store(shared)
	g.perKey = g.slots
	if shared {
		g.perKey = g.sharedPerKey
	}
	// Slots free for waiters that were held back by the old limit.
	var ready []*gateWaiter
	for {
		next, w, ok := g.waiting.PopIf(g.free)
		if !ok {
			break
		}
		g.takeLocked(next)
		ready = append(ready, w)
	}
	g.mu.Unlock()
	for _, w := range ready {
		w.ready <- struct{}{}
	}
}

// free reports whether key may take a slot now: always while the gate is
// not shared, since no one else waits for it. g.mu is held.
func (g *Gate) free(key any) bool {
	return !g.shared.Load() || g.in < g.slots && g.held[key] < g.perKey
}

func (g *Gate) takeLocked(key any) {
	g.in++
	g.held[key]++
}

// Waiting is how many callers wait in Enter or EnterContext for a slot.
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting.Len()
}

// Shared reports whether more than one key uses the gate (Share).
func (g *Gate) Shared() bool { return g.shared.Load() }

// Enter returns when the caller holds a slot: at once if one is free for
// key, otherwise after every other key waiting before it has had a turn.
// It reports whether the slot was counted, as it is unless the gate is
// not shared: then Enter costs one atomic load, and there is nothing to
// leave. Each counted Enter must be matched by one Leave with the same
// key. (A holder let in uncounted just before the gate became shared
// finishes its turn uncounted.)
func (g *Gate) Enter(key any) (counted bool) {
	if !g.shared.Load() {
		return false
	}
	g.mu.Lock()
	if g.free(key) {
		g.takeLocked(key)
		g.mu.Unlock()
		return true
	}
	w := waiterPool.Get().(*gateWaiter)
	g.waiting.Push(key, w)
	g.mu.Unlock()
	<-w.ready // the slot is handed over by Leave, and counted for key
	waiterPool.Put(w)
	// Woken by Leave, this goroutine runs next on Leave's P and inherits
	// its time slice, ahead of every goroutine the network made ready
	// meanwhile: holders handing the slot to each other would keep
	// another caller's reader from even reading its request until the
	// runtime preempts the chain, 10 ms later. Going to the back of the
	// run queue lets those run first.
	runtime.Gosched()
	return true
}

// EnterContext is Enter for a caller that gives up when ctx ends: it
// returns ctx's error, holding nothing, if its turn has not come by then.
// Its turn, when it comes, is a slot only: unlike Enter it does not yield
// the processor, since the caller holds something (a device) others wait
// for.
func (g *Gate) EnterContext(ctx context.Context, key any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	if g.free(key) {
		g.takeLocked(key)
		g.mu.Unlock()
		return nil
	}
	w := waiterPool.Get().(*gateWaiter)
	g.waiting.Push(key, w)
	g.mu.Unlock()
	select {
	case <-w.ready:
		waiterPool.Put(w)
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	removed := g.waiting.Remove(key, w)
	g.mu.Unlock()
	if !removed {
		<-w.ready // handed the slot as ctx ended: pass it on
		g.Leave(key)
	}
	waiterPool.Put(w)
	return ctx.Err()
}

// TryEnter takes a slot for key if one is free for it, counted whether
// or not the gate is shared.
func (g *Gate) TryEnter(key any) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.free(key) {
		g.takeLocked(key)
		return true
	}
	return false
}

// Leave gives key's slot up: to the first waiter in turn whose key may
// take it, or back.
func (g *Gate) Leave(key any) {
	g.mu.Lock()
	g.in--
	if g.held[key]--; g.held[key] <= 0 {
		delete(g.held, key)
	}
	next, w, ok := g.waiting.PopIf(g.free)
	if ok {
		g.takeLocked(next)
	}
	g.mu.Unlock()
	if ok {
		w.ready <- struct{}{}
	}
}
