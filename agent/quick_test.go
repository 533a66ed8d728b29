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
// Idle readies a device for another, once; before returning when the
// device is quick, on another goroutine when it is slow. PrepareNext
// always readies it before returning.
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

	s.Idle(ctx)
	if n := slow.Prepared.Load(); n != 0 {
		t.Fatalf("prepared before any one-shot: %d", n)
	}
	if err := mac(providers.SHA256); err != nil {
		t.Fatal(err)
	}
	s.Idle(ctx)
	if n := slow.Prepared.Load(); n != 0 {
		t.Fatalf("prepared after a single one-shot: %d", n)
	}
	for range 20 {
		if err := mac(providers.SHA256); err != nil {
			t.Fatal(err)
		}
	}
	s.Idle(ctx)
	if n := slow.Prepared.Load(); n != 1 {
		t.Fatalf("after one-shots on a quick device, Idle prepared %d times, want 1 before returning", n)
	}
	s.Idle(ctx)
	if err := mac(providers.SHA1); err == nil {
		t.Fatal("SHA-1 on a SHA-256 key succeeded")
	}
	s.Idle(ctx)
	if n := slow.Prepared.Load(); n != 1 {
		t.Errorf("prepared again with no new one-shot, or after a failed one: %d", n)
	}

	slow.Delay = 5 * time.Millisecond
	if err := mac(providers.SHA256); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	slow.PrepareGate = gate
	idle := make(chan struct{})
	go func() { s.Idle(ctx); close(idle) }()
	select {
	case <-idle:
	case <-time.After(10 * time.Second):
		t.Fatal("Idle waited for a slow device to be prepared")
	}
	close(gate)
	for deadline := time.Now().Add(10 * time.Second); slow.Prepared.Load() != 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a slow device was never prepared")
		}
	}
	// A goroutine that may wait prepares before PrepareNext returns.
	if err := mac(providers.SHA256); err != nil {
		t.Fatal(err)
	}
	s.PrepareNext(ctx)
	if n := slow.Prepared.Load(); n != 3 {
		t.Errorf("PrepareNext returned before preparing: %d", n)
	}
}
