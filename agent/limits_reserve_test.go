package agent_test

import (
	"errors"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
)

// TestBytesReservedForLightCallers: at the default limits, four uids
// holding all they may (64 MiB each) leave the last 32 MiB of max_bytes
// to uids holding little: a fifth uid and root are still served, and the
// agent never holds more than max_bytes.
func TestBytesReservedForLightCallers(t *testing.T) {
	a, _ := newAgent(t)
	lim := agent.DefaultLimits
	var heavy []*agent.Session
	for uid := uint32(1001); uid <= 1004; uid++ {
		s := a.NewSession(agent.Peer{UID: uid, GID: uid, PID: 1, Known: true})
		defer s.Close()
		heavy = append(heavy, s)
		for s.Budget().Charge(1<<20) == nil {
		}
		defer s.Budget().Release(int(s.Budget().Held()))
	}
	if got, want := a.BytesHeld(), lim.MaxBytes-lim.MaxBytes/providers.ReservedShare; got != want {
		t.Fatalf("four uids at their bounds hold %d together, want %d", got, want)
	}
	for _, s := range heavy {
		if err := s.Budget().Charge(1); !errors.Is(err, providers.ErrLimit) {
			t.Errorf("a heavy uid's byte more: %v", err)
		}
	}
	for _, uid := range []uint32{1005, 0} {
		s := a.NewSession(agent.Peer{UID: uid, GID: uid, PID: 1, Known: true})
		if err := s.Budget().Charge(100_000); err != nil {
			t.Errorf("uid %d's 100 KB with four uids at their bounds: %v", uid, err)
		}
		if got := a.BytesHeld(); got > lim.MaxBytes {
			t.Errorf("agent holds %d, past max_bytes %d", got, lim.MaxBytes)
		}
		s.Budget().Release(100_000)
		s.Close()
	}
}
