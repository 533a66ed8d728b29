package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// TestStopWithStuckTokenCall: a PKCS#11 call that never returns (here
// SoftHSM2 waiting on file locks this test holds, as a hung HSM would)
// must not keep a stopping agent alive: it answered the request at its
// timeout, and SIGTERM ends the process within its shutdown grace and a
// little more, not when the token lets go.
func TestStopWithStuckTokenCall(t *testing.T) {
	tok := softhsm.Require(t, "stop-test")
	dir := agenttest.SocketDir(t)
	sock := filepath.Join(dir, "agent.sock")
	conf := filepath.Join(dir, "agent.toml")
	writeFile(t, conf, fmt.Sprintf("socket = %q\nshutdown_grace = \"1s\"\n", sock)+
		pkcs11Config(t, dir, softhsm.Module, tok, `timeout = "500ms"`), 0o600)
	agent := startAgent(t, nil, "--config", conf)
	c := agent.mustDial(t, sock)
	ctx := context.Background()

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
	agent.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-agent.done:
		t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(6 * time.Second):
		t.Fatalf("still running 6 s after SIGTERM (shutdown grace 1 s) with a token call stuck\n%s", agent.logs())
	}
}
