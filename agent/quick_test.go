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
