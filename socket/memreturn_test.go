package socket_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/internal/memreturn"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket/wire"
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

// TestLargeFramesGoBackWhole: a frame too large for a connection's
// buffer is read into memory outside the Go heap, and all of it is given
// back once the connection ends, whatever it was doing: frames read
// whole, and one announced and sent in part.
func TestLargeFramesGoBackWhole(t *testing.T) {
	a := start(t, agenttest.Options{})
	frame.Trim()
	total0, _ := frame.Mapped()
	r := dialRaw(t, a.Path, true)
	for i := range 4 {
		r.mac(uint32(i+1), strings.Repeat("x", (i+1)*200<<10))
	}
	if total, _ := frame.Mapped(); total == total0 {
		t.Error("no frame was read outside the heap")
	}
	half := dialRaw(t, a.Path, true)
	req, err := (&wire.Message{Type: wire.TypeMAC, ID: 1, Algorithm: uint8(providers.SHA256), Key: []byte("k"), Data: make([]byte, 900<<10)}).Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	half.sendRaw(req[:300<<10])
	r.mac(9, "still served")
	r.nc.Close()
	half.nc.Close()
	// Each connection gives its buffer back as it ends; Trim unmaps them.
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		total, pooled := frame.Mapped()
		if total-pooled == total0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d bytes of frames still held after both connections closed", total-pooled-total0)
		}
	}
	frame.Trim()
	if total, _ := frame.Mapped(); total != total0 {
		t.Errorf("%d bytes mapped after Trim, want %d", total, total0)
	}
}
