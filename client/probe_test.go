package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
)

// probeChild runs in a process under another uid: for each name in
// PROBE_NAMES it tries a one-shot MAC, a one-shot verify and an open,
// and prints each reply's error name and message, with the name itself
// replaced, one line per name.
func probeChild() {
	ctx := context.Background()
	c, err := client.Dial(ctx, os.Getenv("PROBE_SOCK"))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	for _, name := range strings.Split(os.Getenv("PROBE_NAMES"), ",") {
		var replies []string
		_, err := c.MAC(ctx, name, client.SHA256, []byte("m"))
		replies = append(replies, providers.ErrorName(err)+": "+fmt.Sprint(err))
		err = c.VerifyMAC(ctx, name, client.SHA256, []byte("m"), make([]byte, 32))
		replies = append(replies, providers.ErrorName(err)+": "+fmt.Sprint(err))
		_, err = c.New(ctx, name, client.SHA256)
		replies = append(replies, providers.ErrorName(err)+": "+fmt.Sprint(err))
		fmt.Println(strings.ReplaceAll(strings.Join(replies, " | "), name, "NAME"))
	}
	os.Exit(0)
}

// TestNameProbing runs a client as a user who may use no key of the
// names it tries, and checks it gets the same reply, code and message,
// for a key that exists, one that does not, a configured key it is not
// allowed, and a configured key whose object is missing, so that it
// cannot tell which names exist. The agent's owner still tells
// key_not_found from permission_denied. It must run as root, as CI does.
func TestNameProbing(t *testing.T) {
	agenttest.RequireRoot(t, "to run a client as another user")
	const sockGroup = 2001
	dir, self := agenttest.TestBinaryForOthers(t, "hmac-agent-probe-")

	other := agent.Policy{UIDs: []uint32{1001}, Ops: agent.OpMAC | agent.OpVerify}
	a := agenttest.Start(t, agenttest.Options{Keys: []agent.KeyConfig{
		{Name: "configured-other", Provider: "soft", Policy: other},
		{Name: "configured-missing", Provider: "soft", Policy: other},
	}})
	ctx := context.Background()
	for _, k := range []string{"exists-owner", "configured-other"} {
		if _, err := a.Soft.ImportKey(ctx, k, []byte("probe secret")); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "run", "agent.sock")
	a.Listen(t, path, sockGroup)

	names := []string{"exists-owner", "no-such-key", "configured-other", "configured-missing"}
	cmd := agenttest.ChildCommand(self, &syscall.Credential{Uid: 1003, Gid: 1003, Groups: []uint32{sockGroup}},
		"HMAC_AGENT_PROBE_CHILD=1", "PROBE_SOCK="+path, "PROBE_NAMES="+strings.Join(names, ","))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(names) {
		t.Fatalf("%d replies for %d names: %s", len(lines), len(names), out)
	}
	for i, line := range lines {
		t.Logf("uid 1003, %s: %s", names[i], line)
		if !strings.HasPrefix(line, "permission_denied: ") {
			t.Errorf("uid 1003, %s: %s; want permission_denied", names[i], line)
		}
		if line != lines[0] {
			t.Errorf("uid 1003 tells %s from %s:\n%s\n%s", names[i], names[0], line, lines[0])
		}
	}

	// The owner (root here) is told which is which.
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for name, want := range map[string]error{
		"exists-owner":       nil,
		"no-such-key":        client.ErrKeyNotFound,
		"configured-other":   client.ErrPermissionDenied,
		"configured-missing": client.ErrKeyNotFound,
	} {
		_, err := c.MAC(ctx, name, client.SHA256, []byte("m"))
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Errorf("owner, %s: %v; want %v", name, err, want)
		}
	}
}
