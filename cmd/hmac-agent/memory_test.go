package main

import (
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/socket"
)

// TestWorstCaseAtDefaults: the worst case the memory limit rests on is
// the one docs/operations.md states for the defaults: about 698 MiB for
// connections, budgets, contexts and the frame pool, and about 64.3 MiB
// more for each provider's calls stuck past their deadline (64 of 1 MiB
// frames and 5 KiB each), so about 762 MiB with the one software provider of an
// agent without a config, and 891 MiB with a PKCS#11 and a TPM provider
// besides.
func TestWorstCaseAtDefaults(t *testing.T) {
	const mib = 1 << 20
	perProvider := worstCaseMemory(agent.DefaultLimits, socket.Limits{}, 1) - worstCaseMemory(agent.DefaultLimits, socket.Limits{}, 0)
	if want := int64(64 * (1<<20 + 5<<10)); perProvider != want {
		t.Errorf("stuck calls of one provider at the defaults %d bytes, docs/operations.md says 64 × (1 MiB + 5 KiB) = %d", perProvider, want)
	}
	for _, c := range []struct {
		providers     int
		documentedMiB float64
	}{{0, 698}, {1, 762}, {3, 891}} {
		got := float64(worstCaseMemory(agent.DefaultLimits, socket.Limits{}, c.providers)) / mib
		if got < c.documentedMiB-2 || got > c.documentedMiB+2 {
			t.Errorf("worst case at the defaults with %d providers %.1f MiB, docs/operations.md says about %.0f MiB", c.providers, got, c.documentedMiB)
		}
		t.Logf("%d providers: %.1f MiB", c.providers, got)
	}
}
