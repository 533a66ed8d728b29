package agent_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// TestQuickFollowsOneShotTimes: a device key's one-shots are quick (run
// inline by a server) only once measured fast, stop being quick when they
// turn slow or the device is busy, and become quick again.
func TestQuickFollowsOneShotTimes(t *testing.T) {
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	slow := &agenttest.SlowProvider{Secret: []byte("quick")}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{soft, slow}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	soft.ImportKey(ctx, "k", []byte("k"))
	s := a.NewSession(owner)
	defer s.Close()
	key := []byte("slow-key")
	macs := func(n int) {
		t.Helper()
		for range n {
			if _, err := s.MAC(ctx, key, providers.SHA256, []byte("m"), nil); err != nil {
				t.Fatal(err)
			}
		}
	}

	if !a.Quick(ctx, []byte("k")) || !a.Quick(ctx, []byte("no-such-key")) {
		t.Error("software and unknown keys must be quick")
	}
	if a.Quick(ctx, key) {
		t.Error("a device key is quick before any one-shot was timed")
	}
	macs(20)
	if !a.Quick(ctx, key) {
		t.Error("fast one-shots: not quick")
	}
	slow.Occupied.Store(true)
	if a.Quick(ctx, key) {
		t.Error("quick while the device is busy")
	}
	slow.Occupied.Store(false)
	slow.Delay = 5 * time.Millisecond
	macs(1)
	if a.Quick(ctx, key) {
		t.Error("quick after a 5 ms one-shot")
	}
	slow.Delay = 0
	macs(40)
	if !a.Quick(ctx, key) {
		t.Error("not quick again after fast one-shots")
	}
}

// TestIdlePreparesForTheLastOneShot: after two like successful one-shots,
// Idle readies a device for another, once. It does so before returning
// only once both the device's one-shots and its readying have been
// measured quick; else on another goroutine. PrepareNext always readies
// it before returning.
func TestIdlePreparesForTheLastOneShot(t *testing.T) {
	slow := &agenttest.SlowProvider{Secret: []byte("prepare")}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{slow}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	s := a.NewSession(owner)
	defer s.Close()
	key := []byte("slow-key")
	mac := func(alg providers.Algorithm) error {
		_, err := s.MAC(ctx, key, alg, []byte("m"), nil)
		return err
	}
	prepared := func(want int64, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); slow.Prepared.Load() < want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: prepared %d times, want %d", what, slow.Prepared.Load(), want)
			}
		}
		if n := slow.Prepared.Load(); n != want {
			t.Fatalf("%s: prepared %d times, want %d", what, n, want)
		}
	}
	mustMAC := func() {
		t.Helper()
		if err := mac(providers.SHA256); err != nil {
			t.Fatal(err)
		}
	}
	// offReader runs Idle, fails if it waits for the device to be
	// readied, and checks that the readying happens after all.
	offReader := func(want int64, what string) {
		t.Helper()
		gate := make(chan struct{})
		slow.PrepareGate = gate
		done := make(chan struct{})
		go func() { s.Idle(ctx); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Idle waited for the device to be readied", what)
		}
		close(gate)
		prepared(want, what)
	}

	s.Idle(ctx)
	mustMAC()
	s.Idle(ctx)
	prepared(0, "before any or after a single one-shot")
	for range 20 {
		mustMAC()
	}
	// Quick one-shots, but readying not yet measured.
	offReader(1, "first readying")
	s.Idle(ctx)
	if err := mac(providers.SHA1); err == nil {
		t.Fatal("SHA-1 on a SHA-256 key succeeded")
	}
	s.Idle(ctx)
	prepared(1, "with no new one-shot, or after a failed one")

	// Readyings measured fast (the first one's time included the gate):
	// then before Idle returns.
	slow.PrepareGate = nil
	for range 40 {
		mustMAC()
		s.Idle(ctx)
	}
	prepared(41, "fast readyings")
	mustMAC()
	s.Idle(ctx)
	if n := slow.Prepared.Load(); n != 42 {
		t.Fatalf("quick device: Idle returned with %d readyings, want 42", n)
	}

	// A slow readying (20 ms, an eighth of which moves the average past
	// a millisecond) sends the next off the reader, though one-shots are
	// quick.
	mustMAC()
	slowGate := make(chan struct{})
	slow.PrepareGate = slowGate
	done := make(chan struct{})
	go func() { s.Idle(ctx); close(done) }()
	time.Sleep(20 * time.Millisecond)
	close(slowGate)
	<-done
	mustMAC()
	offReader(44, "after a 20 ms readying")

	// Slow one-shots: off the reader too.
	slow.Delay = 5 * time.Millisecond
	mustMAC()
	offReader(45, "after a 5 ms one-shot")

	// A goroutine that may wait readies before PrepareNext returns.
	mustMAC()
	s.PrepareNext(ctx)
	if n := slow.Prepared.Load(); n != 46 {
		t.Errorf("PrepareNext returned before readying: %d", n)
	}
}
