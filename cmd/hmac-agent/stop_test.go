package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// TestStopWithStuckTokenCall: a PKCS#11 call that never returns (here
// SoftHSM2 waiting on file locks this test holds, as a hung HSM would)
// must not keep a stopping agent alive: it answered the request at its
// timeout, and SIGTERM ends the process within its shutdown grace and a
// little more, not when the token lets go.
func TestStopWithStuckTokenCall(t *testing.T) {
	tok := softhsm.Require(t, "stop-test")
	dir, err := os.MkdirTemp("", "hmac-agent-stop-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "hmac-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	sock := filepath.Join(dir, "agent.sock")
	pin := filepath.Join(dir, "pin")
	if err := os.WriteFile(pin, []byte(tok.PIN), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "agent.toml")
	text := fmt.Sprintf(`socket = %q
shutdown_grace = "1s"
[audit]
destination = "off"
[[provider]]
name = "hsm"
type = "pkcs11"
module = %q
token = %q
pin_file = %q
timeout = "500ms"
`, sock, softhsm.Module, tok.Label, pin)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", conf)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
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

	// Hold a write lock on every file of the token: SoftHSM2 waits for
	// it, without end, in the next call that touches them. The locks are
	// this process's, and go when it lets go of the files.
	files, _ := filepath.Glob(filepath.Join(softhsm.TokenDir(), "*", "*"))
	for _, name := range files {
		f, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		lk := syscall.Flock_t{Type: syscall.F_WRLCK}
		if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
			t.Fatalf("lock %s: %v", name, err)
		}
	}
	if _, err := c.ImportKey(ctx, "hsm", "stuck", []byte("key bytes")); err == nil {
		t.Fatal("an import succeeded with the token's files locked")
	}

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err // for the deferred wait
		t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(6 * time.Second):
		t.Fatalf("still running 6 s after SIGTERM (shutdown grace 1 s) with a token call stuck\n%s", logs.String())
	}
}
