package tpm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
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
	defer sw.Resume()
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
	if err := sw.Resume(); err != nil {
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
	defer sw.Resume()
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
	sw.Resume()
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
