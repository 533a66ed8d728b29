package client_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// The uid that plays another local user: the owner of a forging agent.
const otherUID = 1005

// trustSetup makes a directory other users may pass through, a copy of
// the test binary they may run, and a directory owned by otherUID where
// that user plants its server. It needs root.
func trustSetup(t *testing.T) (bin, evilDir string) {
	t.Helper()
	agenttest.RequireRoot(t, "to run a server as another user")
	t.Setenv("HMAC_AGENT_UID", "")
	dir, bin := agenttest.TestBinaryForOthers(t, "hmac-agent-trust-")
	evilDir = filepath.Join(dir, "evil")
	if err := os.Mkdir(evilDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(evilDir, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	return bin, evilDir
}

// TestDialRefusesAgentOfAnotherUser plants a forging agent run by another
// user at the socket path: Dial refuses it, naming the path and the uid,
// and the forger receives not one byte (no HELLO, no key name, no tag).
func TestDialRefusesAgentOfAnotherUser(t *testing.T) {
	bin, evil := trustSetup(t)
	path := filepath.Join(evil, "agent.sock")
	f := agenttest.StartForger(t, bin, path, otherUID, otherUID)
	ctx := context.Background()

	c, err := client.Dial(ctx, path)
	if err == nil {
		c.Close()
		t.Fatal("Dial accepted an agent run by another user")
	}
	if !errors.Is(err, client.ErrUntrustedAgent) {
		t.Fatalf("Dial: %v, want ErrUntrustedAgent", err)
	}
	for _, want := range []string{path, "uid 1005"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error %q does not name %q", err, want)
		}
	}
	t.Logf("refused: %v", err)
	// An option naming some other uid does not widen trust to this one.
	if _, err := client.Dial(ctx, path, client.WithAgentUID(otherUID+1)); !errors.Is(err, client.ErrUntrustedAgent) {
		t.Errorf("Dial with another uid trusted: %v, want ErrUntrustedAgent", err)
	}
	f.Stop()
	accepted, received := f.Record()
	if accepted != 2 || received != 0 {
		t.Errorf("the forger accepted %d connections and received %d bytes; want 2 and 0", accepted, received)
	}
}

// TestDialTrustsNamedAgentUser checks the agents a client accepts besides
// root's: one the user names in HMAC_AGENT_UID (a uid or a user name) or
// with WithAgentUID, and one running as the client's own uid. The forger
// is believed in each case, which shows it would fool a client without
// the check.
func TestDialTrustsNamedAgentUser(t *testing.T) {
	bin, evil := trustSetup(t)
	path := filepath.Join(evil, "agent.sock")
	f := agenttest.StartForger(t, bin, path, otherUID, otherUID)
	ctx := context.Background()
	forged := make([]byte, 32)
	believe := func(name string, opts ...client.Option) {
		t.Helper()
		c, err := client.Dial(ctx, path, opts...)
		if err != nil {
			t.Errorf("%s: Dial: %v", name, err)
			return
		}
		defer c.Close()
		if err := c.VerifyMAC(ctx, "webhook", client.SHA256, []byte("msg"), forged); err != nil {
			t.Errorf("%s: VerifyMAC through a trusted forger: %v", name, err)
		}
	}
	t.Setenv("HMAC_AGENT_UID", "1005")
	believe("HMAC_AGENT_UID=1005")
	t.Setenv("HMAC_AGENT_UID", "")
	believe("WithAgentUID(1005)", client.WithAgentUID(otherUID))

	// A name that is no user is an error, before any connection.
	t.Setenv("HMAC_AGENT_UID", "no-such-user-here")
	if _, err := client.Dial(ctx, path); err == nil || !strings.Contains(err.Error(), "HMAC_AGENT_UID") {
		t.Errorf("Dial with HMAC_AGENT_UID naming no user: %v", err)
	}
	t.Setenv("HMAC_AGENT_UID", "")

	// The client's own uid: a client running as 1005 believes its own
	// user's agent.
	cmd := agenttest.ChildCommand(bin, &syscall.Credential{Uid: otherUID, Gid: otherUID},
		"HMAC_AGENT_POLICY_CHILD=1", "POLICY_SOCK="+path, "POLICY_CASES=webhook:verify_mac", "POLICY_TAG="+strings.Repeat("00", 32))
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("a client as uid 1005 against its own user's agent: %v: %s", err, out)
	}

	// A user name: nobody runs a second forger.
	nobody := filepath.Join(evil, "nobody")
	os.Mkdir(nobody, 0o755)
	os.Chown(nobody, 65534, 65534)
	path = filepath.Join(nobody, "agent.sock")
	agenttest.StartForger(t, bin, path, 65534, 65534)
	t.Setenv("HMAC_AGENT_UID", "nobody")
	believe("HMAC_AGENT_UID=nobody")
	t.Setenv("HMAC_AGENT_UID", "")
	if _, err := client.Dial(ctx, path); !errors.Is(err, client.ErrUntrustedAgent) {
		t.Errorf("without HMAC_AGENT_UID, nobody's agent: %v, want ErrUntrustedAgent", err)
	}
	f.Stop()
}

// TestReconnectChecksAgain: a client connected to the real agent, which
// then stops; another user takes over the path. The client's next call
// dials again and refuses the impostor without sending it the request.
func TestReconnectChecksAgain(t *testing.T) {
	bin, _ := trustSetup(t)
	dir, err := os.MkdirTemp("", "hmac-agent-reconnect-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o711)
	run := filepath.Join(dir, "run")
	path := filepath.Join(run, "agent.sock")
	a, stop, err := agenttest.Run(filepath.Join(dir, "keys"), path, agenttest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a.Soft.ImportKey(ctx, "webhook", []byte("secret"))
	c, err := client.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.MAC(ctx, "webhook", client.SHA256, []byte("msg")); err != nil {
		t.Fatal(err)
	}
	stop()
	// The path falls to another user (here: its directory changes hands).
	if err := os.Chown(run, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	f := agenttest.StartForger(t, bin, path, otherUID, otherUID)
	_, err = c.MAC(ctx, "webhook", client.SHA256, []byte("msg"))
	if !errors.Is(err, client.ErrUntrustedAgent) {
		t.Fatalf("MAC after the agent was replaced: %v, want ErrUntrustedAgent", err)
	}
	err = c.VerifyMAC(ctx, "webhook", client.SHA256, []byte("msg"), make([]byte, 32))
	if !errors.Is(err, client.ErrUntrustedAgent) {
		t.Fatalf("VerifyMAC after the agent was replaced: %v, want ErrUntrustedAgent", err)
	}
	f.Stop()
	if accepted, received := f.Record(); accepted == 0 || received != 0 {
		t.Errorf("the forger accepted %d connections and received %d bytes; want some and 0", accepted, received)
	}
}

// TestRootListenerPathWalkedAsTheKernelDoes: a root listener is trusted
// only through directories and links that root or trusted users own. The
// walk must resolve the path as connect did: "link/.." is the parent of
// the link's target, not the directory the link is in. Here another
// user's link sends "ok/link/../agent.sock" to a root listener in that
// user's directory, while "ok/agent.sock", which cleaning the path
// lexically would check instead, lies in root's.
func TestRootListenerPathWalkedAsTheKernelDoes(t *testing.T) {
	_, evil := trustSetup(t)
	root := filepath.Dir(evil)
	ok := filepath.Join(root, "ok")
	if err := os.Mkdir(ok, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ok, "agent.sock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(evil, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(ok, "link")
	if err := os.Symlink(sub, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	// The listener is this process, root: a socket root made for a
	// service another user runs.
	l, err := net.Listen("unix", filepath.Join(evil, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var record bytes.Buffer
	served := make(chan struct{})
	go func() { agenttest.ServeForgery(l, &record); close(served) }()
	path := ok + "/link/../agent.sock"
	c, err := client.Dial(context.Background(), path)
	if err == nil {
		c.VerifyMAC(context.Background(), "webhook", client.SHA256, []byte("msg"), make([]byte, 32))
		c.Close()
		t.Error("Dial trusted a root listener reached through another user's link")
	} else if !errors.Is(err, client.ErrUntrustedAgent) || !strings.Contains(err.Error(), link) {
		t.Errorf("Dial: %v, want ErrUntrustedAgent naming %s", err, link)
	}
	l.Close()
	<-served
	if strings.Contains(record.String(), "received") {
		t.Errorf("the forger received bytes:\n%s", record.String())
	}
}
