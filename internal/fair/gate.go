package fair

import (
	"context"
	"runtime"
	"sync"
)

// Gate lets at most a fixed number of holders in at once and makes the
// rest wait in turn by key (a caller's uid), so that work done on the
// agent's own CPUs is shared by callers, not by whoever sends most.
//
// It exists for a property of the Go scheduler: a processor (P) looks
// for sockets that became readable only when it has no goroutine to run,
// or when the runtime's monitor finds the network unpolled for 10 ms. A
// caller that keeps every P busy (one reader per connection, each finding
// its next request already buffered) so hides every other caller's
// request for up to 10 ms, whatever order the agent would serve them in.
// A gate narrower than GOMAXPROCS leaves a P free to poll, and a holder
// that would re-enter while another caller waits parks instead, which
// frees its P too.
//
// A Gate is safe for concurrent use.
type Gate struct {
	mu      sync.Mutex
	slots   int
	in      int
	waiting Queue[*gateWaiter]
}

type gateWaiter struct{ ready chan struct{} }

var waiterPool = sync.Pool{New: func() any { return &gateWaiter{ready: make(chan struct{}, 1)} }}

// NewGate returns a gate for slots holders at once; slots <= 0 means
// DefaultSlots.
func NewGate(slots int) *Gate {
	if slots <= 0 {
		slots = DefaultSlots()
	}
	return &Gate{slots: slots}
}

// DefaultSlots is one fewer than GOMAXPROCS, and at least one: a P left
// to poll the network (see Gate).
func DefaultSlots() int { return max(1, runtime.GOMAXPROCS(0)-1) }

// Enter returns when the caller holds a slot: at once if one is free and
// nobody waits, otherwise after every other key waiting before it has had
// a turn. Each Enter must be matched by one Leave.
func (g *Gate) Enter(key any) {
	g.mu.Lock()
	if g.in < g.slots && g.waiting.Len() == 0 {
		g.in++
		g.mu.Unlock()
		return
	}
	w := waiterPool.Get().(*gateWaiter)
	g.waiting.Push(key, w)
	g.mu.Unlock()
	<-w.ready // the slot is handed over by Leave; g.in already counts it
	waiterPool.Put(w)
	// Woken by Leave, this goroutine runs next on Leave's P and inherits
	// its time slice, ahead of every goroutine the network made ready
	// meanwhile: holders handing the slot to each other would keep
	// another caller's reader from even reading its request until the
	// runtime preempts the chain, 10 ms later. Going to the back of the
	// run queue lets those run first.
	runtime.Gosched()
}

// EnterContext is Enter for a caller that gives up when ctx ends: it
// returns ctx's error, holding nothing, if its turn has not come by then.
// Its turn, when it comes, is a slot only: unlike Enter it does not yield
// the processor, since the caller holds something (a device) others wait
// for.
func (g *Gate) EnterContext(ctx context.Context, key any) error {
	g.mu.Lock()
	if g.in < g.slots && g.waiting.Len() == 0 {
		g.in++
		g.mu.Unlock()
		return nil
	}
	if err := ctx.Err(); err != nil {
		g.mu.Unlock()
		return err
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
		g.Leave()
	}
	waiterPool.Put(w)
	return ctx.Err()
}

// TryEnter takes a slot if one is free and nobody waits.
func (g *Gate) TryEnter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.in < g.slots && g.waiting.Len() == 0 {
		g.in++
		return true
	}
	return false
}

// Leave gives the slot up: to the next waiter in turn, or back.
func (g *Gate) Leave() {
	g.mu.Lock()
	w, ok := g.waiting.Pop()
	if !ok {
		g.in--
	}
	g.mu.Unlock()
	if ok {
		w.ready <- struct{}{}
	}
}

// Waiting reports whether anyone waits for a slot: a holder with more
// to do yields when it does.
func (g *Gate) Waiting() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting.Len() > 0
}
