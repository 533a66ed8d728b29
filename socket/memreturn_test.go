package socket_test

import (
	"context"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/memreturn"
)

// TestMemoryReturnedAfterAttack: once an attacker of another uid that
// made the agent hold tens of megabytes has left, the agent's resident
// memory goes back to within 10% of where it was, while another client
// stays connected (so the agent is never idle), and soon: not over the
// minutes the Go runtime's background scavenger would take.
func TestMemoryReturnedAfterAttack(t *testing.T) {
	agenttest.RequireRoot(t, "to run the attacker under another uid")
	bin := attackerBinary(t)

	a := startHostileAgent(t, "")
	stay, err := client.Dial(context.Background(), a.path) // a neighbour connected throughout
	if err != nil {
		t.Fatal(err)
	}
	defer stay.Close()
	victim(t, a.path, 20)
	// The start, once the agent has given back what the warm-up left.
	time.Sleep(memreturn.Settle + time.Second)
	before, _ := a.memory(t)

	atk := startAttacker(t, a, bin, "pkcs11-input")
	victim(t, a.path, 5)
	under, _ := a.memory(t)
	atk.stop()
	if under < before+32<<20 {
		t.Fatalf("the attack made the agent hold too little to tell: RSS %d MiB before, %d MiB under attack", before>>20, under>>20)
	}
	// A poke, a look after Settle, and a follow-up an Interval later.
	bound := before + before/10
	if raceEnabled {
		// The race detector's shadow of the heap stays resident when
		// the heap is returned: only the heap's part of what the attack
		// added can come back.
		bound = under - (under-before)*15/100
	}
	var rss int64
	for end := time.Now().Add(memreturn.Settle + 3*memreturn.Interval); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if rss, _ = a.memory(t); rss <= bound {
			break
		}
	}
	t.Logf("agent RSS %d MiB before, %d MiB under attack, %d MiB after", before>>20, under>>20, rss>>20)
	if rss > bound {
		t.Errorf("agent RSS %.1f MiB after the attacker left, %.1f MiB before, %.1f MiB under attack: bound %.1f MiB",
			float64(rss)/(1<<20), float64(before)/(1<<20), float64(under)/(1<<20), float64(bound)/(1<<20))
	}
}
