package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// newSlowAgent starts an agent with a software provider and the slow test
// device, logging into the returned buffer.
func newSlowAgent(t *testing.T, slow *agenttest.SlowProvider) (*agent.Agent, *logBuffer) {
	t.Helper()
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	a, err := agent.New(agent.Options{
		Providers: []providers.Provider{soft, slow},
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, logs
}

// slowContext starts an agent with the slow test device, a session of
// owner's, and context 1 open on the device's key.
func slowContext(t *testing.T, slow *agenttest.SlowProvider) (*agent.Agent, *agent.Session, []byte) {
	t.Helper()
	a, _ := newSlowAgent(t, slow)
	s := a.NewSession(owner)
	t.Cleanup(s.Close)
	key := []byte("slow-key")
	if err := s.Open(context.Background(), 1, key, providers.SHA256); err != nil {
		t.Fatal(err)
	}
	return a, s, key
}

// logBuffer collects log lines from many goroutines.
type logBuffer struct{ agenttest.SyncBuffer }

// lines returns the lines that contain msg.
func (l *logBuffer) lines(msg string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, msg) {
			out = append(out, line)
		}
	}
	return out
}

// TestDeadlineEndsContext: a device call that does not return within the
// provider's timeout answers unavailable naming the provider at the
// deadline; its context ends (context_lost afterwards); the stuck call's
// MAC is closed when it returns at last, and the device serves again. The
// stuck calls hold references to the frame buffers their input lies in,
// so the buffers are not reused under them, and release them as they
// return.
func TestDeadlineEndsContext(t *testing.T) {
	const timeout = 100 * time.Millisecond
	gate := make(chan struct{})
	slow := &agenttest.SlowProvider{Secret: []byte("k"), Deadline: timeout, UpdateGate: gate}
	a, s, key := slowContext(t, slow)
	ctx := context.Background()
	start := time.Now()
	update := frame.New([]byte("abc"), nil)
	if err := s.Update(ctx, 1, update.Bytes(), update); err != nil {
		t.Fatalf("Update reports only a missing context: %v", err)
	}
	update.Release() // the caller's reference
	if !update.Held() {
		t.Error("the input of a stuck Update went back to the pool while the call could read it")
	}
	if took := time.Since(start); took < timeout || took > timeout+time.Second {
		t.Errorf("a stuck Update returned after %s, want about %s", took, timeout)
	}
	// The context is over: later requests say so without reaching the device.
	if err := s.Update(ctx, 1, []byte("more"), nil); err != nil {
		t.Fatal(err)
	}
	_, err := s.Finalize(ctx, 1, nil)
	if !errors.Is(err, providers.ErrContextLost) || !strings.Contains(err.Error(), `provider "slow" did not answer within 100ms`) {
		t.Errorf("Finalize after a stuck Update = %v, want context lost naming the provider", err)
	}

	start = time.Now()
	_, err = s.MAC(ctx, key, providers.SHA256, []byte("m"), nil)
	if !errors.Is(err, providers.ErrUnavailable) || err.Error() != `provider "slow" did not answer within 100ms` {
		t.Errorf("one-shot on a stuck device = %v, want unavailable naming the provider", err)
	}
	if took := time.Since(start); took < timeout || took > timeout+time.Second {
		t.Errorf("a stuck one-shot returned after %s, want about %s", took, timeout)
	}
	// Software keys do not wait for the device meanwhile.
	if _, err := a.ImportKey(ctx, owner, "soft", "sw", []byte("k")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MAC(ctx, []byte("sw"), providers.SHA256, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}

	if st := a.Status(ctx); st.Providers[1].Healthy || st.Providers[1].FailedRequests != 2 {
		t.Errorf("status during the stall: %+v, want slow unhealthy with 2 failed requests", st.Providers[1])
	}
	oneShot := frame.New([]byte("m"), nil)
	started := make(chan error, 1)
	s.StartMAC(ctx, key, providers.SHA256, oneShot.Bytes(), oneShot, nil, func(_ []byte, _ int, err error) { started <- err })
	if err := <-started; !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("started one-shot on a stuck device = %v, want unavailable", err)
	}
	oneShot.Release()
	if !oneShot.Held() {
		t.Error("the input of a stuck one-shot went back to the pool while the call could read it")
	}
	close(gate) // the device answers at last
	for deadline := time.Now().Add(5 * time.Second); slow.Opened.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d MACs of calls past their deadline were never closed", slow.Opened.Load())
		}
	}
	for deadline := time.Now().Add(5 * time.Second); update.Held() || oneShot.Held(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("calls past their deadline never released their input's buffers")
		}
	}
	if _, err := s.MAC(ctx, key, providers.SHA256, []byte("m"), nil); err != nil {
		t.Errorf("one-shot after the device came back: %v", err)
	}
	if st := a.Status(ctx); !st.Providers[1].Healthy {
		t.Errorf("status after the device came back: %+v", st.Providers[1])
	}
}

// TestProviderStateLoggedOnce: an outage is logged once when it starts,
// with its reason, and once when it ends, with its length and the
// requests that failed; the warnings of the failed requests are limited,
// and what they said goes to the log, never to the client.
func TestProviderStateLoggedOnce(t *testing.T) {
	slow := &agenttest.SlowProvider{Secret: []byte("k")}
	a, logs := newSlowAgent(t, slow)
	ctx := context.Background()
	s := a.NewSession(owner)
	defer s.Close()
	key := []byte("slow-key")

	const failures = 50
	for range failures {
		_, err := s.MAC(ctx, key, providers.SHA256, []byte("fail"), nil)
		if !errors.Is(err, providers.ErrUnavailable) || !strings.Contains(err.Error(), `"slow"`) {
			t.Fatalf("MAC on a failing device = %v, want unavailable naming the provider", err)
		}
		if strings.Contains(err.Error(), "CKR_DEVICE_ERROR") {
			t.Fatalf("the device's own text reached the client: %v", err)
		}
	}
	if _, err := s.MAC(ctx, key, providers.SHA256, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
	down, up, warns := logs.lines(`msg="provider down"`), logs.lines(`msg="provider up"`), logs.lines(`msg="provider operation failed"`)
	if len(down) != 1 || !strings.Contains(down[0], "provider=slow") || !strings.Contains(down[0], "CKR_DEVICE_ERROR") {
		t.Errorf("provider down logged %d times, want once with the device's error: %q", len(down), down)
	}
	if len(up) != 1 || !strings.Contains(up[0], "failed_requests=50") || !strings.Contains(up[0], "outage=") {
		t.Errorf("provider up logged %d times, want once with the outage and 50 failed requests: %q", len(up), up)
	}
	if len(warns) != 1 {
		t.Errorf("%d warnings for %d failed requests, want 1 (the rest counted)", len(warns), failures)
	}
	if left := logs.lines("provider warnings left out"); len(left) != 1 || !strings.Contains(left[0], "count=49") {
		t.Errorf("the warnings left out were not counted: %q", left)
	}
}

// TestStuckCallsBounded: a device that never answers again does not
// gather a goroutine per request without end. Once MaxStuckCalls calls wait
// past their deadline, further calls fail at once, naming the provider;
// when the device answers, they are served again.
func TestStuckCallsBounded(t *testing.T) {
	const timeout = 50 * time.Millisecond
	gate := make(chan struct{})
	slow := &agenttest.SlowProvider{Secret: []byte("k"), Deadline: timeout, UpdateGate: gate}
	a, _ := newSlowAgent(t, slow)
	ctx := context.Background()
	s := a.NewSession(owner)
	defer s.Close()
	key := []byte("slow-key")
	var wg sync.WaitGroup
	for range agent.MaxStuckCalls {
		wg.Go(func() {
			if _, err := s.MAC(ctx, key, providers.SHA256, []byte("m"), nil); !errors.Is(err, providers.ErrUnavailable) {
				t.Errorf("MAC on a stuck device: %v", err)
			}
		})
	}
	wg.Wait()
	start := time.Now()
	_, err := s.MAC(ctx, key, providers.SHA256, []byte("m"), nil)
	if took := time.Since(start); !errors.Is(err, providers.ErrUnavailable) || !strings.Contains(err.Error(), `provider "slow"`) || took >= timeout {
		t.Errorf("with %d calls stuck, MAC = %v after %s; want unavailable at once", agent.MaxStuckCalls, err, took)
	}
	close(gate)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := s.MAC(ctx, key, providers.SHA256, []byte("m"), nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the device answers again, but calls still fail: %v", err)
		}
	}
}

// TestLateCallOwnsItsInput: a device call past its deadline still reads
// its input when it runs at last, after its caller has returned and
// reused (or unmapped) the memory the input lay in. Input the caller
// passed without a buffer is copied for the call, so the device reads
// what was sent.
func TestLateCallOwnsItsInput(t *testing.T) {
	gate := make(chan struct{})
	seen := make(chan string, 4)
	slow := &agenttest.SlowProvider{Secret: []byte("k"), Deadline: 50 * time.Millisecond, UpdateGate: gate,
		Seen: func(b []byte) { seen <- string(b) }}
	_, s, key := slowContext(t, slow)
	ctx := context.Background()
	update := []byte("update input")
	s.Update(ctx, 1, update, nil)
	oneShot := []byte("one-shot input")
	if _, err := s.MAC(ctx, key, providers.SHA256, oneShot, nil); !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("one-shot on a stuck device: %v", err)
	}
	copy(update, "XXXXXXXXXXXX") // the caller's buffer, reused
	copy(oneShot, "XXXXXXXXXXXXXX")
	close(gate)
	got := map[string]bool{}
	for range 2 {
		select {
		case in := <-seen:
			got[in] = true
		case <-time.After(5 * time.Second):
			t.Fatal("the calls past their deadline never ran")
		}
	}
	if !got["update input"] || !got["one-shot input"] {
		t.Errorf("late calls read %v, want what was sent", got)
	}
}
