package fair

import (
	"context"
	"errors"
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
			g.Leave()
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
	g := NewGate(1)
	g.Enter("flood") // the holder
	order, wg := enterInOrder(t, g, []string{"flood", "flood", "flood", "victim"})
	g.Leave()
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
	g := NewGate(2)
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
	g.Leave()
	<-in
	g.Leave()
	g.Leave()
	if g.in != 0 {
		t.Fatalf("%d slots taken after every holder left", g.in)
	}
}

// A holder that wants in again while another caller waits goes behind
// it, however many times it has had the slot: turns, not first come.
func TestGateHolderReenteringWaitsItsTurn(t *testing.T) {
	g := NewGate(1)
	g.Enter("flood")
	victimIn := make(chan struct{})
	release := make(chan struct{})
	go func() {
		g.Enter("victim")
		close(victimIn)
		<-release
		g.Leave()
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	g.Leave()
	<-victimIn
	floodIn := make(chan struct{})
	go func() {
		g.Enter("flood")
		close(floodIn)
	}()
	waitFor(t, func() bool { return g.waiters() == 1 })
	close(release)
	<-floodIn
	g.Leave()
}

func TestDefaultSlotsLeavesAProcessorFree(t *testing.T) {
	if n := DefaultSlots(); n < 1 {
		t.Fatalf("DefaultSlots() = %d", n)
	}
}

func BenchmarkGateUncontended(b *testing.B) {
	g := NewGate(1)
	for b.Loop() {
		g.Enter("a")
		g.Leave()
	}
}

// A waiter whose context ends leaves the line holding nothing, and the
// slot goes on to the next one in turn.
func TestGateEnterContextGivesUp(t *testing.T) {
	g := NewGate(1)
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
	g.Leave()
	<-in
	if g.TryEnter() {
		t.Fatal("TryEnter got a slot the holder has")
	}
	g.Leave()
	if !g.TryEnter() {
		t.Fatal("TryEnter found no free slot")
	}
	g.Leave()
}

// A context ending just as the slot is handed over must not lose the slot.
func TestGateEnterContextRaceKeepsSlots(t *testing.T) {
	g := NewGate(1)
	for range 2000 {
		g.Enter("h")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			if g.EnterContext(ctx, "w") == nil {
				g.Leave()
			}
			close(done)
		}()
		go cancel()
		g.Leave()
		<-done
	}
	if !g.TryEnter() {
		t.Fatal("a slot was lost")
	}
}
