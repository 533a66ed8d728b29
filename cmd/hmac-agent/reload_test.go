package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// TestSIGHUPEndsRevokedContexts runs a real agent, opens contexts, and
// reloads it with SIGHUP, as systemctl reload does, taking mac away on
// one key: that key's open contexts are ended, their next request,
// whether an update's sticky error reported by finalize, a copy or a
// finalize, is denied, and the other key's context goes on.
func TestSIGHUPEndsRevokedContexts(t *testing.T) {
	dir := agenttest.SocketDir(t)
	sock := filepath.Join(dir, "agent.sock")
	conf := filepath.Join(dir, "agent.toml")
	writeConf := func(narrowedOps string) {
		text := fmt.Sprintf(`socket = %q
[audit]
destination = "off"
[[provider]]
name = "soft"
type = "software"
path = %q
[[key]]
name = "narrowed"
provider = "soft"
object = "a"
[key.policy]
users = [%d]
operations = %s
[[key]]
name = "kept"
provider = "soft"
object = "b"
[key.policy]
users = [%d]
`, sock, filepath.Join(dir, "keys"), os.Geteuid(), narrowedOps, os.Geteuid())
		writeFile(t, conf, text, 0o600)
	}
	writeConf(`["mac", "verify"]`)
	agent := startAgent(t, nil, "--config", conf)
	c := agent.mustDial(t, sock)
	ctx := context.Background()
	for _, obj := range []string{"a", "b"} {
		if _, err := c.ImportKey(ctx, "soft", obj, []byte("secret-"+obj)); err != nil {
			t.Fatal(err)
		}
	}
	var narrowed []*client.HMAC
	for range 3 {
		h, err := c.New(ctx, "narrowed", client.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		h.Update([]byte("before"))
		narrowed = append(narrowed, h)
	}
	kept, err := c.New(ctx, "kept", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	kept.Update([]byte("before"))
	if st, err := c.Status(ctx); err != nil || st.Contexts != 4 {
		t.Fatalf("%d contexts before the reload, want 4 (%v)", st.Contexts, err)
	}

	writeConf(`["verify"]`)
	syscall.Kill(agent.pid(), syscall.SIGHUP)
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err := c.MAC(ctx, "narrowed", client.SHA256, nil)
		if errors.Is(err, client.ErrPermissionDenied) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reload did not take mac away: %v\n%s", err, agent.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st, err := c.Status(ctx); err != nil || st.Contexts != 1 {
		t.Errorf("%d contexts after the reload, want 1: the revoked ones are freed (%v)", st.Contexts, err)
	}
	narrowed[0].Update([]byte("after"))
	if _, err := narrowed[0].Finalize(ctx); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("finalize after an update on a revoked context: %v", err)
	}
	if _, err := narrowed[1].Copy(ctx); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("copy of a revoked context: %v", err)
	}
	if _, err := narrowed[2].Finalize(ctx); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("finalize of a revoked context: %v", err)
	}
	kept.Update([]byte("after"))
	if got, err := kept.Finalize(ctx); err != nil || !bytes.Equal(got, tag([]byte("secret-b"), []byte("beforeafter"))) {
		t.Errorf("the context the reload left alone: %x %v", got, err)
	}
}

// TestSIGHUPRefusesAConfigOthersMayWrite reloads an agent whose
// configuration file was made world-writable and given a wider policy,
// as another user who could write it would: the reload is rejected,
// saying why, and the running policy stays. Before, the agent read any
// file it could open, so whoever could write it gave themselves keys at
// the next reload.
func TestSIGHUPRefusesAConfigOthersMayWrite(t *testing.T) {
	dir := agenttest.SocketDir(t)
	sock := filepath.Join(dir, "agent.sock")
	conf := filepath.Join(dir, "agent.toml")
	writeConf := func(ops string, mode os.FileMode) {
		writeFile(t, conf, fmt.Sprintf(`socket = %q
[audit]
destination = "off"
[[provider]]
name = "soft"
type = "software"
path = %q
[[key]]
name = "webhook"
provider = "soft"
[key.policy]
users = [%d]
operations = %s
`, sock, filepath.Join(dir, "keys"), os.Geteuid(), ops), mode)
		if err := os.Chmod(conf, mode); err != nil {
			t.Fatal(err)
		}
	}
	writeConf(`["verify"]`, 0o600)
	agent := startAgent(t, nil, "--config", conf)
	c := agent.mustDial(t, sock)
	ctx := context.Background()
	if _, err := c.ImportKey(ctx, "soft", "webhook", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MAC(ctx, "webhook", client.SHA256, nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("MAC under a verify-only policy: %v", err)
	}

	writeConf(`["mac", "verify"]`, 0o666)
	syscall.Kill(agent.pid(), syscall.SIGHUP)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(agent.logs(), "reload rejected"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			_, err := c.MAC(ctx, "webhook", client.SHA256, nil)
			t.Fatalf("no reload rejected (MAC now: %v):\n%s", err, agent.logs())
		}
	}
	if !strings.Contains(agent.logs(), "agent.toml has mode 0666") {
		t.Errorf("the rejection does not say why:\n%s", agent.logs())
	}
	if _, err := c.MAC(ctx, "webhook", client.SHA256, nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("MAC after the rejected reload: %v, want the running policy's denial", err)
	}
}
