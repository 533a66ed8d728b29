package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
)

// TestSIGHUPEndsRevokedContexts runs a real agent, opens contexts, and
// reloads it with SIGHUP, as systemctl reload does, taking mac away on
// one key: that key's open contexts are ended, their next request,
// whether an update's sticky error reported by finalize, a copy or a
// finalize, is denied, and the other key's context goes on.
func TestSIGHUPEndsRevokedContexts(t *testing.T) {
	dir, err := os.MkdirTemp("", "hmac-agent-reload-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "hmac-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
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
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConf(`["mac", "verify"]`)
	cmd := exec.Command(bin, "serve", "--config", conf)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	ctx := context.Background()
	var c *client.Client
	for i := 0; ; i++ {
		if c, err = client.Dial(ctx, sock); err == nil {
			break
		}
		if i > 500 {
			t.Fatalf("agent did not start: %v\n%s", err, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer c.Close()
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
	syscall.Kill(cmd.Process.Pid, syscall.SIGHUP)
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err := c.MAC(ctx, "narrowed", client.SHA256, nil)
		if errors.Is(err, client.ErrPermissionDenied) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reload did not take mac away: %v\n%s", err, logs.String())
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
