package main

import (
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/socket"
)

// TestWorstCaseAtDefaults: the worst case the memory limit rests on is
// the one docs/operations.md states for the defaults, about 634 MiB.
func TestWorstCaseAtDefaults(t *testing.T) {
	got := worstCaseMemory(agent.DefaultLimits, socket.Limits{})
	const mib = 1 << 20
	if got < 630*mib || got > 640*mib {
		t.Errorf("worst case at the defaults %.1f MiB, docs/operations.md says about 634 MiB", float64(got)/mib)
	}
}
