//go:build linux

package socket_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/socket"
)

// TestDigestHashingBoundedPerUID: a policy naming an executable's digest
// makes the agent hash each caller's binary at connect. A uid that
// connects from one new large binary after another (each a new file
// version, so never in the cache) has the agent hash only its credit's
// worth; its other connections get no digest and are denied, and a
// caller of another uid is still hashed and served.
func TestDigestHashingBoundedPerUID(t *testing.T) {
	agenttest.RequireRoot(t, "to run the attacker under another uid")
	if err := socket.CheckIdentitySupport(false, true); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "hmac-agent-hashing-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	selfSum := copyBinary(t, filepath.Join(dir, "victim"), nil)
	st, err := os.Stat(self)
	if err != nil {
		t.Fatal(err)
	}
	size := st.Size()

	audit := new(syncBuffer)
	a := start(t, agenttest.Options{Audit: slog.New(slog.NewJSONHandler(audit, nil)), Keys: []agent.KeyConfig{{Name: "k", Provider: "soft", Policy: agent.Policy{
		UIDs: []uint32{0, attackerUID}, Ops: agent.OpMAC | agent.OpVerify,
		Executables: []agent.Executable{{Path: self, SHA256: selfSum}},
	}}}})
	os.Chmod(filepath.Dir(a.Path), 0o711)
	os.Chmod(a.Path, 0o666)
	// Enough credit for two of the attacker's binaries, and no refill to
	// speak of while the test runs.
	credit := 2*size + size/2
	socket.SetHashCredit(t, credit, time.Hour)

	const copies = 6
	bins := make([]string, copies)
	for i := range bins {
		bins[i] = filepath.Join(dir, fmt.Sprintf("attacker%d", i))
		copyBinary(t, bins[i], []byte(fmt.Sprintf("version %d", i)))
	}
	before := socket.HashedBytes()
	var wg sync.WaitGroup
	outs := make([]string, copies)
	for i, bin := range bins {
		wg.Go(func() {
			cmd := exec.Command(bin, "-test.run=^$")
			cmd.Env = append(os.Environ(), "HMAC_AGENT_IDENTITY_CHILD=cases", "IDENTITY_SOCK="+a.Path, "IDENTITY_CASES=k:mac")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackerUID, Gid: attackerUID}}
			cmd.Stdin = strings.NewReader("x")
			out, err := cmd.CombinedOutput()
			outs[i] = strings.TrimSpace(string(out))
			if err != nil {
				outs[i] += " (" + err.Error() + ")"
			}
		})
	}
	wg.Wait()
	hashed := socket.HashedBytes() - before
	t.Logf("%d binaries of %d MiB from uid %d: the agent hashed %d MiB (credit %d MiB); outcomes %q",
		copies, size>>20, attackerUID, hashed>>20, credit>>20, outs)
	if hashed > credit {
		t.Errorf("the agent hashed %d bytes for one uid, credit %d", hashed, credit)
	}
	if !strings.Contains(audit.String(), "not hashed") {
		t.Errorf("no denial in the audit log says why the binary had no digest:\n%s", audit.String())
	}
	for i, o := range outs {
		if o != "permission_denied" {
			t.Errorf("attacker %d: %q, want permission_denied", i, o)
		}
	}

	// The victim, of another uid, is hashed from its own credit.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.MAC(ctx, "k", client.SHA256, []byte("victim")); err != nil {
		t.Fatalf("the victim, running the binary the policy names, was refused: %v", err)
	}
}
