package tpm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// openWith opens a provider on sw with tweak applied to its config.
func openWith(t testing.TB, sw *swtpm.TPM, state string, tweak func(*tpm.Config)) *tpm.Provider {
	t.Helper()
	cfg := tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: state}
	tweak(&cfg)
	p, err := tpm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestStalledTPM: swtpm stops answering (SIGSTOP). A command fails with
// ErrUnavailable naming the provider once the timeout passes, so does the
// health check, and when swtpm goes on, the reply it owed the cut command
// is never taken for another command's: every tag after it is right.
func TestStalledTPM(t *testing.T) {
	sw := swtpm.Require(t)
	const timeout = time.Second
	p := openWith(t, sw, t.TempDir()+"/state", func(c *tpm.Config) { c.Timeout = timeout })
	if p.Timeout() != timeout {
		t.Errorf("Timeout() = %s, want %s", p.Timeout(), timeout)
	}
	ctx := context.Background()
	secret := []byte("stall")
	if _, err := p.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.MAC(ctx, "k", client.SHA256, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if err := sw.Pause(); err != nil {
		t.Fatal(err)
	}
	defer sw.Continue()
	// The agent must answer at all: a hang here is the bug.
	done := make(chan error, 1)
	go func() { _, err := c.MAC(ctx, "k", client.SHA256, []byte("cut")); done <- err }()
	select {
	case err = <-done:
	case <-time.After(20 * timeout):
		t.Fatal("a command to a stalled TPM got no answer")
	}
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), `"tpm"`) {
		t.Errorf("MAC on a stalled TPM: %v, want ErrUnavailable naming provider \"tpm\"", err)
	}
	if err := sw.Continue(); err != nil {
		t.Fatal(err)
	}
	// Let swtpm answer the cut command, into a connection the provider
	// must no longer read.
	time.Sleep(100 * time.Millisecond)
	// Service returns by itself; then every reply is the reply to its own
	// command.
	// Each message differs, so that a reply read for the wrong command
	// shows as a wrong tag.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		probe := []byte(fmt.Sprintf("probe %d", i))
		tag, err := c.MAC(ctx, "k", client.SHA256, probe)
		if err == nil {
			if !bytes.Equal(tag, reference(providers.SHA256, secret, probe)) {
				t.Fatalf("the first MAC after the stall: %x, the wrong tag", tag)
			}
			break
		}
		if !errors.Is(err, client.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("after the stall: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 20 {
		msg := []byte(fmt.Sprintf("message %d", i))
		tag, err := c.MAC(ctx, "k", client.SHA256, msg)
		if err != nil || !bytes.Equal(tag, reference(providers.SHA256, secret, msg)) {
			t.Fatalf("MAC %d after the stall: %x %v", i, tag, err)
		}
	}
	if err := p.Health(ctx); err != nil {
		t.Errorf("health after the stall: %v", err)
	}
}

// TestStalledTPMHealth: the health check of a stalled TPM answers within
// about the timeout, even while a command is stuck, and is good again
// when the TPM goes on.
func TestStalledTPMHealth(t *testing.T) {
	sw := swtpm.Require(t)
	const timeout = time.Second
	p := openWith(t, sw, t.TempDir()+"/state", func(c *tpm.Config) { c.Timeout = timeout })
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("health")); err != nil {
		t.Fatal(err)
	}
	k, _ := p.Key(ctx, "k")
	if err := sw.Pause(); err != nil {
		t.Fatal(err)
	}
	defer sw.Continue()
	stuck := make(chan error, 1)
	go func() {
		m, _ := k.NewMAC(ctx, providers.SHA256)
		err := m.Update(ctx, make([]byte, 3000))
		stuck <- err
	}()
	go func() {
		_, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("stuck"), nil)
		stuck <- err
	}()
	for range 3 {
		if err := p.Health(ctx); !errors.Is(err, providers.ErrUnavailable) {
			t.Errorf("health of a stalled TPM: %v, want ErrUnavailable", err)
		}
	}
	sw.Continue()
	<-stuck
	<-stuck
	deadline := time.Now().Add(10 * time.Second)
	for p.Health(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("health after the stall: %v", p.Health(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTPMKilledUnderLoad: swtpm is SIGKILLed while clients make MACs on a
// TPM key through an agent, and started again on the same state a second
// later. Clients see only ErrUnavailable naming the provider meanwhile,
// never a wrong tag, and success again once the TPM is back.
func TestTPMKilledUnderLoad(t *testing.T) {
	sw := swtpm.Require(t)
	p := openWith(t, sw, t.TempDir()+"/state", func(c *tpm.Config) { c.Timeout = time.Second })
	ctx := context.Background()
	secret := []byte("killed")
	if _, err := p.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var logMu sync.Mutex
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}, Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer func() {
		if t.Failed() { // the agent's log has the errors in full
			logMu.Lock()
			t.Log(logs.String())
			logMu.Unlock()
		}
	}()
	var mu sync.Mutex
	var lastOK time.Time
	counts := map[string]int{}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				msg := []byte(fmt.Sprintf("worker %d message %d", w, i))
				tag, err := c.MAC(ctx, "k", client.SHA256, msg)
				mu.Lock()
				switch {
				case err == nil && bytes.Equal(tag, reference(providers.SHA256, secret, msg)):
					counts["ok"]++
					lastOK = time.Now()
				case err == nil:
					counts["wrong tag"]++
				case errors.Is(err, client.ErrUnavailable) && strings.Contains(err.Error(), `"tpm"`):
					counts["unavailable"]++
				default:
					counts[err.Error()]++
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := sw.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	nt, err := swtpm.Start(sw.Dir)
	if err != nil {
		t.Fatal(err)
	}
	*sw = *nt
	back := time.Now()
	var firstOK time.Duration
	for deadline := back.Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		ok := lastOK.After(back)
		mu.Unlock()
		if ok {
			firstOK = time.Since(back)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	for what, n := range counts {
		if what != "ok" && what != "unavailable" {
			t.Errorf("clients saw %q %d times; only ErrUnavailable naming the provider is right", what, n)
		}
	}
	if firstOK == 0 {
		t.Fatalf("no MAC succeeded within 10 s of swtpm's return: %v", counts)
	}
	t.Logf("swtpm killed for 1 s: %v; first success within %s of its return", counts, firstOK.Round(time.Millisecond))
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// stuckCommand is a MAC stuck in a stopped swtpm, holding the TPM's turn.
type stuckCommand struct {
	t    *testing.T
	sw   *swtpm.TPM
	done chan error
}

// stickCommand stops sw and starts a MAC with key that waits in it.
func stickCommand(t *testing.T, sw *swtpm.TPM, key providers.Key) *stuckCommand {
	t.Helper()
	if err := sw.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Continue() })
	s := &stuckCommand{t: t, sw: sw, done: make(chan error, 1)}
	go func() {
		_, err := key.(providers.OneShot).SumMAC(context.Background(), providers.SHA256, []byte("stuck"), nil)
		s.done <- err
	}()
	time.Sleep(200 * time.Millisecond) // the command is in the TPM
	return s
}

// stillStuck fails the test if the command has ended: what was to give
// up before it did not.
func (s *stuckCommand) stillStuck(what string) {
	s.t.Helper()
	select {
	case err := <-s.done:
		s.t.Fatalf("the stuck command ended first (%v): %s waited for it", err, what)
	default:
	}
}

// resume lets swtpm go on and returns the stuck command's result.
func (s *stuckCommand) resume() error {
	s.t.Helper()
	if err := s.sw.Continue(); err != nil {
		s.t.Fatal(err)
	}
	return <-s.done
}

// importedKey opens a provider on sw with a timeout of a minute (longer
// than any test waits) and returns it with key "k" imported.
func importedKey(t *testing.T, sw *swtpm.TPM) (*tpm.Provider, providers.Key) {
	t.Helper()
	p := openWith(t, sw, t.TempDir()+"/state", func(c *tpm.Config) { c.Timeout = time.Minute })
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("behind")); err != nil {
		t.Fatal(err)
	}
	key, err := p.Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	return p, key
}

// TestCallBehindStalledCommandGivesUpAtItsDeadline: with swtpm stopped
// and one command stuck in it, a second call waiting for its turn at the
// TPM fails with ErrUnavailable when its own context ends, not when the
// stuck command's timeout passes.
func TestCallBehindStalledCommandGivesUpAtItsDeadline(t *testing.T) {
	sw := swtpm.Require(t)
	_, key := importedKey(t, sw)
	ctx := context.Background()
	k := key.(providers.OneShot)
	if _, err := k.SumMAC(ctx, providers.SHA256, []byte("warm"), nil); err != nil {
		t.Fatal(err)
	}
	stuck := stickCommand(t, sw, key)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := k.SumMAC(short, providers.SHA256, []byte("behind"), nil)
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("a call behind a stuck command: %v, want ErrUnavailable", err)
	}
	stuck.stillStuck("the call behind it")
	if err := stuck.resume(); err != nil {
		t.Fatalf("the stuck command after swtpm went on: %v", err)
	}
}

// TestCloseWhileAKeyIsCreated: Close, queued for the TPM's turn ahead of
// a GenerateKey that holds the key table while it waits for the turn,
// returns once the TPM answers again, and the GenerateKey fails as closed.
// Before, Close took the turn and then waited for the key table forever.
func TestCloseWhileAKeyIsCreated(t *testing.T) {
	sw := swtpm.Require(t)
	p, err := tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: t.TempDir() + "/state", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("x")); err != nil {
		t.Fatal(err)
	}
	key, err := p.Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	stuck := stickCommand(t, sw, key)
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	time.Sleep(200 * time.Millisecond)
	generated := make(chan error, 1)
	go func() { _, err := p.GenerateKey(ctx, "g", 0); generated <- err }()
	time.Sleep(200 * time.Millisecond)
	stuck.resume() // its result is Close's to decide
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close hung behind a key being created")
	}
	if err := <-generated; !errors.Is(err, providers.ErrClosed) {
		t.Errorf("GenerateKey racing Close: %v, want ErrClosed", err)
	}
}

// TestStreamEndingBehindStalledCommand: a context with a sequence whose
// UPDATE gives up at its own deadline, behind a stuck command, returns
// then: its sequence is flushed at the next command instead of waiting
// for the turn.
func TestStreamEndingBehindStalledCommand(t *testing.T) {
	sw := swtpm.Require(t)
	_, key := importedKey(t, sw)
	ctx := context.Background()
	m, err := key.NewMAC(ctx, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(ctx, make([]byte, 3000)); err != nil { // a sequence in the TPM now
		t.Fatal(err)
	}
	stuck := stickCommand(t, sw, key)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := m.Update(short, make([]byte, 3000)); err == nil {
		t.Fatal("an UPDATE behind a stuck command succeeded")
	}
	stuck.stillStuck("the UPDATE")
	if err := stuck.resume(); err != nil {
		t.Fatal(err)
	}
	// The sequence left to flush goes at the next command, which works.
	if _, err := key.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("after"), nil); err != nil {
		t.Fatal(err)
	}
}
