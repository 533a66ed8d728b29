package socket_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
// refused, since it frees what the context holds; it is answered. Its
// connection has no other request in flight, so it goes uncharged;
// TestEndingRequestsWaitForChargedBudget covers one that must wait.
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

// TestEndingRequestsWaitForChargedBudget: when a uid's budget is full
// of charged requests on the same connection (UPDATEs with data, held at
// a device that does not answer), requests that end contexts (FINALIZE,
// VERIFY, CLOSE) are neither refused nor let in uncounted: each waits
// until a request of its connection finishes, is charged, and is
// answered. None reaches the device before the device has let an UPDATE
// go; what the requests at the device hold (each RequestMemory and its
// data) never passes the budget by more than the one request a
// connection may have uncharged; what the agent counts for the uid never
// passes the budget; and both return to nothing at the end.
func TestEndingRequestsWaitForChargedBudget(t *testing.T) {
	// Each UPDATE is charged RequestMemory and its data, 16 KiB: 64 fill
	// the budget to the byte, and the rest are refused. Its frame fits
	// the connection's read buffer, so reading it charges nothing more.
	const (
		maxBytes = 1 << 20
		chunk    = 16<<10 - socket.RequestMemory
		updates  = maxBytes/(socket.RequestMemory+chunk) + 4
	)
	slow := &agenttest.SlowProvider{Secret: testSecret, UpdateGate: make(chan struct{})}
	var answer sync.Once
	deviceAnswers := func() { answer.Do(func() { close(slow.UpdateGate) }) }
	t.Cleanup(deviceAnswers)
	dev := &deviceGauge{SlowProvider: slow}
	a := start(t, agenttest.Options{
		Providers: []providers.Provider{dev},
		Limits:    agent.Limits{MaxBytesPerUID: maxBytes},
	})
	uid := uint32(os.Geteuid())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	open := func() *client.HMAC {
		h, err := c.New(ctx, "slow-key", client.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	finalizing, verifying, closing := open(), open(), open()
	// A MAC with a software key, found now, runs on the reader with
	// nothing charged; one sends the UPDATEs below.
	if _, err := c.MAC(ctx, "k", client.SHA256, nil); err != nil {
		t.Fatal(err)
	}
	streams := make([]*client.HMAC, updates)
	for i := range streams {
		streams[i] = open()
	}

	var maxHeld atomic.Int64
	watching, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for {
			maxHeld.Store(max(maxHeld.Load(), a.Agent.BytesHeldBy(uid)))
			select {
			case <-watching:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()

	// The UPDATEs fill the budget with charged data and wait at the
	// device; the reader reads the ending requests after them.
	data := make([]byte, chunk)
	for _, h := range streams {
		if err := h.Update(data); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.MAC(ctx, "k", client.SHA256, nil); err != nil {
		t.Fatal(err)
	}
	for a.Agent.BytesHeldBy(uid) != maxBytes && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	// The CLOSE goes out with the FINALIZE and the VERIFY, and waits
	// before them.
	if err := closing.Close(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan string, 3)
	go func() {
		tag, err := finalizing.Finalize(ctx)
		if err == nil && !bytes.Equal(tag, reference("")) {
			err = fmt.Errorf("tag %x, want HMAC(\"\")", tag)
		}
		ended <- fmt.Sprintf("FINALIZE: %v", err)
	}()
	go func() {
		ended <- fmt.Sprintf("VERIFY: %v", verifying.Verify(ctx, reference("")))
	}()
	// Time for an ending request let in wrongly to reach the device.
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-ended:
		t.Fatalf("answered while the budget was full and the device held every UPDATE: %s", r)
	default:
	}
	if n := dev.ended.Load(); n != 0 {
		t.Fatalf("%d ending requests reached the device while the budget was full", n)
	}

	// The device answers again: the UPDATEs finish and free the budget.
	deviceAnswers()
	for range 2 {
		if r := <-ended; r != "FINALIZE: <nil>" && r != "VERIFY: <nil>" {
			t.Errorf("at a budget full of charged requests, %s", r)
		}
	}
	if n := dev.endedEarly.Load(); n != 0 {
		t.Errorf("%d ending requests reached the device before any UPDATE there returned", n)
	}
	var refused int
	for _, h := range streams {
		_, err := h.Finalize(ctx)
		switch {
		case errors.Is(err, client.ErrLimit):
			refused++
		case err != nil:
			t.Errorf("stream: %v", err)
		}
	}
	// The CLOSE is answered by nothing: the count of open contexts
	// says when it ran.
	for slow.Opened.Load() != 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	for a.Agent.BytesHeldBy(uid) != 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	close(watching)
	<-watched

	t.Logf("%d UPDATEs of %d bytes held at the device, %d refused; at most %d bytes counted for the uid, %d in requests at the device; bound %d",
		updates-refused, chunk, refused, maxHeld.Load(), dev.peak.Load(), maxBytes)
	if refused == 0 {
		t.Error("no UPDATE was refused: the budget was not full")
	}
	// Budget.Charge adds before it checks, and takes a refused charge
	// back: a sample may catch the reader in the middle of refusing one
	// request, never more.
	if maxHeld.Load() > maxBytes+socket.RequestMemory+chunk {
		t.Errorf("the agent counted %d bytes for the uid, max_bytes_per_uid %d", maxHeld.Load(), maxBytes)
	}
	if dev.peak.Load() > maxBytes+socket.RequestMemory {
		t.Errorf("requests at the device held %d bytes at once: more than max_bytes_per_uid %d and one uncharged request",
			dev.peak.Load(), maxBytes)
	}
	if n := slow.Opened.Load(); n != 0 {
		t.Errorf("%d contexts still open in the provider", n)
	}
	if n := a.Agent.BytesHeldBy(uid); n != 0 {
		t.Errorf("the agent still counts %d bytes for the uid with nothing in flight", n)
	}
}

// deviceGauge is the slow provider, measuring what the requests at it
// hold (RequestMemory for each, and the data it carries), and when the
// requests that end contexts reach it.
type deviceGauge struct {
	*agenttest.SlowProvider
	now, peak atomic.Int64
	updated   atomic.Int64 // UPDATEs returned
	// ended counts FINALIZEs and VERIFYs that reached the device, and
	// endedEarly those of them before any UPDATE returned.
	ended, endedEarly atomic.Int64
}

func (g *deviceGauge) Key(ctx context.Context, name string) (providers.Key, error) {
	k, err := g.SlowProvider.Key(ctx, name)
	if err != nil {
		return nil, err
	}
	return gaugedKey{k, g}, nil
}

// hold counts n bytes at the device until the returned func is called.
func (g *deviceGauge) hold(n int) (done func()) {
	v := g.now.Add(int64(n))
	for p := g.peak.Load(); v > p && !g.peak.CompareAndSwap(p, v); p = g.peak.Load() {
	}
	return func() { g.now.Add(-int64(n)) }
}

// end notes an ending request at the device.
func (g *deviceGauge) end() {
	g.ended.Add(1)
	if g.updated.Load() == 0 {
		g.endedEarly.Add(1)
	}
}

type gaugedKey struct {
	providers.Key
	g *deviceGauge
}

func (k gaugedKey) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	m, err := k.Key.NewMAC(ctx, alg)
	if err != nil {
		return nil, err
	}
	return &gaugedMAC{MAC: m, g: k.g}, nil
}

type gaugedMAC struct {
	providers.MAC
	g *deviceGauge
}

func (m *gaugedMAC) Update(ctx context.Context, p []byte) error {
	defer m.g.updated.Add(1)
	defer m.g.hold(socket.RequestMemory + len(p))()
	return m.MAC.Update(ctx, p)
}

func (m *gaugedMAC) Finalize(ctx context.Context) ([]byte, error) {
	m.g.end()
	defer m.g.hold(socket.RequestMemory)()
	return m.MAC.Finalize(ctx)
}

func (m *gaugedMAC) Verify(ctx context.Context, tag []byte) error {
	m.g.end()
	defer m.g.hold(socket.RequestMemory + len(tag))()
	return m.MAC.Verify(ctx, tag)
}
