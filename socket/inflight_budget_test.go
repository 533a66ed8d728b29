package socket_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
)

// TestInFlightBoundedPerUID: requests waiting on a stalled device hold
// memory (the request, the goroutine or queue entry that runs it) even
// with no data, and one uid's are bounded by max_bytes_per_uid over all
// its connections, not by max_in_flight on each: past the bound the uid
// gets ErrLimit, and what the agent holds for it never passes the bound.
func TestInFlightBoundedPerUID(t *testing.T) {
	const maxBytes = 1 << 20
	slow := &agenttest.SlowProvider{Secret: testSecret, Delay: time.Second}
	a := start(t, agenttest.Options{
		Providers: []providers.Provider{slow},
		Limits:    agent.Limits{MaxBytesPerUID: maxBytes},
	})
	const conns, perConn = 8, 256 // max_in_flight on each: 2,048 in all
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var (
		wg              sync.WaitGroup
		served, refused atomic.Int64
		maxHeld         atomic.Int64
	)
	for range conns {
		c, err := client.Dial(ctx, a.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range perConn {
			wg.Go(func() {
				// No data: before requests were charged for themselves,
				// these held nothing against the uid's budget.
				_, err := c.MAC(ctx, "slow-key", client.SHA256, nil)
				if errors.Is(err, client.ErrLimit) {
					refused.Add(1)
				} else {
					// Admitted: answered, or failed past the device's
					// deadline.
					served.Add(1)
				}
			})
		}
	}
	// While they wait on the device, what the agent holds for the uid
	// is within the bound.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(10 * time.Millisecond):
		}
		n := a.Agent.BytesHeld()
		if n > maxHeld.Load() {
			maxHeld.Store(n)
		}
	}
	admitted := int64(maxBytes / socket.RequestMemory)
	t.Logf("%d admitted, %d refused with ErrLimit; at most %d bytes held, bound %d", served.Load(), refused.Load(), maxHeld.Load(), maxBytes)
	if served.Load() > admitted || refused.Load() < conns*perConn-admitted {
		t.Errorf("%d of %d requests admitted to wait on a stalled device, want at most %d (max_bytes_per_uid / %d)",
			served.Load(), conns*perConn, admitted, socket.RequestMemory)
	}
	if maxHeld.Load() > maxBytes {
		t.Errorf("the agent held %d bytes for one uid, max_bytes_per_uid %d", maxHeld.Load(), maxBytes)
	}
	if served.Load() == 0 {
		t.Error("no request was served")
	}
}

// TestEndingRequestsAtFullBudget: at a uid's full budget a request that
// ends a context (here FINALIZE, on a connection of its own) is not
// refused, since it frees what the context holds; it is answered.
func TestEndingRequestsAtFullBudget(t *testing.T) {
	const maxBytes = 1 << 20
	slow := &agenttest.SlowProvider{Secret: testSecret, Delay: time.Second}
	a := start(t, agenttest.Options{
		Providers: []providers.Provider{slow},
		Limits:    agent.Limits{MaxBytesPerUID: maxBytes},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	owner, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	h, err := owner.New(ctx, "slow-key", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	// (No UPDATE: one sent now would reach the agent with the FINALIZE,
	// at the full budget, and fail the context as documented.)

	// Another connection of the uid fills its budget with one-shots
	// waiting on the device.
	flood, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	var wg sync.WaitGroup
	var refused atomic.Int64
	for range 256 {
		wg.Go(func() {
			if _, err := flood.MAC(ctx, "slow-key", client.SHA256, nil); errors.Is(err, client.ErrLimit) {
				refused.Add(1)
			}
		})
	}
	for a.Agent.BytesHeld() < maxBytes-socket.RequestMemory && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if _, err := h.Finalize(ctx); errors.Is(err, client.ErrLimit) {
		t.Errorf("FINALIZE at a full budget: %v", err)
	}
	wg.Wait()
	if refused.Load() == 0 {
		t.Error("the flood was never refused: the budget was not full")
	}
}
