package fair

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

// waiters reports how many wait at g.
func (g *Gate) waiters() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting.Len()
}

// enterInOrder starts a goroutine per key that enters g, each once the
// one before it waits, and records the order in which they get in. Each
// leaves as soon as it has recorded itself.
func enterInOrder(t *testing.T, g *Gate, keys []string) (order chan string, wg *sync.WaitGroup) {
	t.Helper()
	order = make(chan string, len(keys))
	wg = new(sync.WaitGroup)
	for i, k := range keys {
		wg.Go(func() {
			g.Enter(k)
			order <- k
			g.Leave(k)
		})
		waitFor(t, func() bool { return g.waiters() == i+1 })
	}
	return order, wg
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestGateServesKeysInTurn(t *testing.T) {
	g := NewGate(1, 1)
	g.Enter("flood") // the holder
	order, wg := enterInOrder(t, g, []string{"flood", "flood", "flood", "victim"})
	g.Leave("flood")
	wg.Wait()
	close(order)
	var got []string
	for k := range order {
		got = append(got, k)
	}
	// The victim came fourth, behind three of the flood's, and goes
	// second: one turn of the flood's, then its own.
	want := []string{"flood", "victim", "flood", "flood"}
	if len(got) != len(want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order %v, want %v", got, want)
		}
	}
}

func TestGateSlots(t *testing.T) {
	g := NewGate(2, 0)
	g.Enter("a")
	g.Enter("a") // a second slot, at once
	in := make(chan struct{})
	go func() {
		g.Enter("b")
		close(in)
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	select {
	case <-in:
		t.Fatal("a third holder got in with two slots taken")
	default:
	}
	g.Leave("a")
	<-in
	g.Leave("a")
	g.Leave("b")
	if g.in != 0 || len(g.held) != 0 {
		t.Fatalf("%d slots taken, %d keys counted after every holder left", g.in, len(g.held))
	}
}

// One key holds at most perKey slots: with one left free, a second holder
// of the same key waits, and another key takes it at once; when the
// first leaves, its own waiter gets the slot it frees.
func TestGatePerKey(t *testing.T) {
	g := NewGate(2, 1)
	g.Enter("flood")
	second := make(chan struct{})
	go func() {
		g.Enter("flood")
		close(second)
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	if !g.TryEnter("victim") {
		t.Fatal("another key found no slot with one free")
	}
	if g.TryEnter("victim") {
		t.Fatal("a key took more than perKey slots")
	}
	select {
	case <-second:
		t.Fatal("a key took more than perKey slots")
	default:
	}
	g.Leave("victim")
	select {
	case <-second:
		t.Fatal("the slot the victim left went to a key at its limit")
	case <-time.After(20 * time.Millisecond):
	}
	g.Leave("flood")
	<-second
	g.Leave("flood")
	if g.in != 0 || len(g.held) != 0 {
		t.Fatalf("%d slots taken, %d keys counted after every holder left", g.in, len(g.held))
	}
}

func TestCPUGateLeavesAProcessorToOthers(t *testing.T) {
	g := NewCPUGate()
	n := runtime.GOMAXPROCS(0)
	if g.slots != n || g.perKey != n {
		t.Fatalf("NewCPUGate, alone: %d slots, %d per key with GOMAXPROCS %d", g.slots, g.perKey, n)
	}
	g.Share(true)
	if n > 1 && g.perKey != n-1 {
		t.Fatalf("NewCPUGate, shared: %d per key with GOMAXPROCS %d", g.perKey, n)
	}
}

// A holder that wants in again while another caller waits goes behind
// it, however many times it has had the slot: turns, not first come.
func TestGateHolderReenteringWaitsItsTurn(t *testing.T) {
	g := NewGate(1, 1)
	g.Enter("flood")
	victimIn := make(chan struct{})
	release := make(chan struct{})
	go func() {
		g.Enter("victim")
		close(victimIn)
		<-release
		g.Leave("victim")
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	g.Leave("flood")
	<-victimIn
	floodIn := make(chan struct{})
	go func() {
		g.Enter("flood")
		close(floodIn)
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	close(release)
	<-floodIn
	g.Leave("flood")
}

func BenchmarkGateUncontended(b *testing.B) {
	g := NewGate(1, 1)
	for b.Loop() {
		g.Enter("a")
		g.Leave("a")
	}
}

// A waiter whose context ends leaves the line holding nothing, and the
// slot goes on to the next one in turn.
func TestGateEnterContextGivesUp(t *testing.T) {
	g := NewGate(1, 1)
	g.Enter("stalled")
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() { gaveUp <- g.EnterContext(ctx, "a") }()
	waitFor(t, func() bool { return g.waiters() == 1 })
	in := make(chan struct{})
	go func() {
		if err := g.EnterContext(context.Background(), "b"); err != nil {
			t.Error(err)
		}
		close(in)
	}()
	waitFor(t, func() bool { return g.waiters() == 2 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("EnterContext after cancel: %v", err)
	}
	if g.waiters() != 1 {
		t.Fatalf("%d waiting after one gave up, want 1", g.waiters())
	}
	g.Leave("stalled")
	<-in
	if g.TryEnter("c") {
		t.Fatal("TryEnter got a slot the holder has")
	}
	g.Leave("b")
	if !g.TryEnter("c") {
		t.Fatal("TryEnter found no free slot")
	}
	g.Leave("c")
}

// A context ending just as the slot is handed over must not lose the slot.
func TestGateEnterContextRaceKeepsSlots(t *testing.T) {
	g := NewGate(1, 1)
	for range 2000 {
		g.Enter("h")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			if g.EnterContext(ctx, "w") == nil {
				g.Leave("w")
			}
			close(done)
		}()
		go cancel()
		g.Leave("h")
		<-done
	}
	if !g.TryEnter("h") {
		t.Fatal("a slot was lost")
	}
}

// A lone key enters uncounted, at once, however many are in; once the
// gate is shared it takes no more than its shared limit, and when it is
// alone again its waiter gets in at once.
func TestGateShare(t *testing.T) {
	g := NewGate(2, 1)
	g.Share(false)
	for range 3 {
		if g.Enter("a") {
			t.Fatal("an unshared gate counted a turn")
		}
	}
	g.Share(true)
	if !g.Enter("a") {
		t.Fatal("a shared gate did not count a turn")
	}
	if g.TryEnter("a") {
		t.Fatal("a key took a second slot while the gate was shared")
	}
	in := make(chan struct{})
	go func() {
		g.Enter("a")
		close(in)
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	g.Share(false)
	<-in
	g.Leave("a")
	g.Leave("a")
	if g.in != 0 || len(g.held) != 0 {
		t.Fatalf("%d slots taken, %d keys counted after every holder left", g.in, len(g.held))
	}
}
