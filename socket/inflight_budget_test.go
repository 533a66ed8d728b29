package socket_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
// gets ErrLimit, and what the agent holds for it never passes the bound,
// while a caller of another uid (a process of its own, as root) is served.
func TestInFlightBoundedPerUID(t *testing.T) {
	const maxBytes = 1 << 20
	slow := &agenttest.SlowProvider{Secret: testSecret, Delay: time.Second}
	a := start(t, agenttest.Options{
		Providers: []providers.Provider{slow},
		Keys: []agent.KeyConfig{{Name: "slow-key", Provider: "slow", Policy: agent.Policy{
			UIDs: []uint32{uint32(os.Geteuid()), attackerUID}, Ops: agent.OpMAC | agent.OpVerify,
		}}},
		Limits: agent.Limits{MaxBytesPerUID: maxBytes},
	})
	var victimBin string
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "hmac-agent-inflight-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		os.Chmod(dir, 0o755)
		victimBin = filepath.Join(dir, "victim")
		copyBinary(t, victimBin, nil)
		os.Chmod(filepath.Dir(a.Path), 0o711)
		os.Chmod(a.Path, 0o666)
	} else if os.Getenv("CI") != "" {
		t.Fatal("CI is set and the test is not root: the other uid's caller must run under another uid")
	}
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
	// is within the bound, and another uid is served.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	victim := make(chan string, 1)
	if victimBin != "" {
		go func() {
			for a.Agent.BytesHeldBy(uint32(os.Geteuid())) < maxBytes-socket.RequestMemory && ctx.Err() == nil {
				time.Sleep(time.Millisecond)
			}
			cmd := exec.Command(victimBin, "-test.run=^$")
			cmd.Env = append(os.Environ(), "HMAC_AGENT_IDENTITY_CHILD=cases", "IDENTITY_SOCK="+a.Path, "IDENTITY_CASES=slow-key:mac")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackerUID, Gid: attackerUID}}
			cmd.Stdin = strings.NewReader("x")
			out, err := cmd.CombinedOutput()
			if err != nil {
				out = append(out, err.Error()...)
			}
			victim <- strings.TrimSpace(string(out))
		}()
	} else {
		victim <- "ok"
	}
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(10 * time.Millisecond):
		}
		n := a.Agent.BytesHeldBy(uint32(os.Geteuid()))
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
	if v := <-victim; v != "ok" {
		t.Errorf("a caller of another uid, while this one's budget was full: %s", v)
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
