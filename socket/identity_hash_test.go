//go:build linux

package socket_test

import (
	"context"
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
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/socket"
)

// A second attacker's uid, for attacks that need two.
const attackerUID2 = 65533

// digestRig is an agent whose key "k" may be used by root and the
// attackers' uids, from the binary victimBin (by path and digest) only,
// with binaries any uid may run.
type digestRig struct {
	a         *agenttest.Agent
	dir       string
	victimBin string
	size      int64 // of each copy of the test binary, before its extra bytes
	audit     *syncBuffer
	log       *syncBuffer
}

func newDigestRig(t *testing.T, limits socket.Limits) *digestRig {
	t.Helper()
	agenttest.RequireRoot(t, "to run the attacker under another uid")
	if err := socket.CheckIdentitySupport(false, true); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	r := &digestRig{audit: new(syncBuffer), log: new(syncBuffer)}
	dir, err := os.MkdirTemp("", "hmac-agent-hashing-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	r.dir = dir
	// A copy of its own, a new file version, so that the victim's
	// digest is not in the cache from an earlier test.
	r.victimBin = filepath.Join(dir, "victim")
	victimSum := copyBinary(t, r.victimBin, []byte(t.Name()))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(self)
	if err != nil {
		t.Fatal(err)
	}
	r.size = st.Size()
	r.a = start(t, agenttest.Options{
		SocketLimits: limits,
		Logger:       slog.New(slog.NewTextHandler(r.log, nil)),
		Audit:        slog.New(slog.NewJSONHandler(r.audit, nil)),
		Keys: []agent.KeyConfig{{Name: "k", Provider: "soft", Policy: agent.Policy{
			UIDs: []uint32{0, attackerUID, attackerUID2}, Ops: agent.OpMAC | agent.OpVerify,
			Executables: []agent.Executable{{Path: r.victimBin, SHA256: victimSum}},
		}}},
	})
	os.Chmod(filepath.Dir(r.a.Path), 0o711)
	os.Chmod(r.a.Path, 0o666)
	return r
}

// binary makes a copy of the test binary named name, differing from the
// others by its extra bytes.
func (r *digestRig) binary(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(r.dir, name)
	copyBinary(t, bin, []byte(name))
	return bin
}

// macAs runs bin as uid, which MACs with "k" on a connection of its own,
// and returns the outcome's error name ("ok" for none). It fails the test
// (from any goroutine) if the child has no outcome within a minute: a
// caller that is never served.
func (r *digestRig) macAs(t *testing.T, uid uint32, bin string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
	var cred *syscall.Credential
	if uid != 0 {
		cred = &syscall.Credential{Uid: uid, Gid: uid}
	}
	// GORACE: a race-enabled child otherwise sleeps a second at exit.
	agenttest.AsUser(cmd, cred, "HMAC_AGENT_IDENTITY_CHILD=cases", "IDENTITY_SOCK="+r.a.Path, "IDENTITY_CASES=k:mac", "GORACE=atexit_sleep_ms=0")
	cmd.Stdin = strings.NewReader("x")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Errorf("uid %d running %s was not served within a minute: %s", uid, filepath.Base(bin), out)
		return "not served"
	}
	if err != nil {
		t.Errorf("uid %d running %s: %v: %s", uid, filepath.Base(bin), err, out)
		return "failed"
	}
	return strings.TrimSpace(string(out))
}

// TestDigestHashingBoundedPerUID: a policy naming an executable's digest
// makes the agent hash each caller's binary at connect. A uid that
// connects from one new large binary after another (each a new file
// version, so never in the cache) has the agent hash one at a time and
// only its credit's worth; its other connections get no digest and are
// denied. A caller of another uid who connects while the attacker's
// connections hold their turn and wait for theirs is hashed and served
// meanwhile: the attacker's binaries are on a filesystem that answers
// the agent's reads only once the victim has been served (a slow disk),
// and the deadline is far off, so only the per-uid turn leaves the victim
// a slot.
func TestDigestHashingBoundedPerUID(t *testing.T) {
	r := newDigestRig(t, socket.Limits{HashTimeout: 10 * time.Minute})
	// Enough credit for two of the attacker's binaries, and no refill to
	// speak of while the test runs.
	credit := 2*r.size + r.size/2
	socket.SetHashCredit(t, credit, time.Hour)

	const copies = 6
	fs := socket.MountStalledFS(t, copies)
	before := socket.HashedBytes()
	var wg sync.WaitGroup
	outs := make([]string, copies)
	for i := range copies {
		wg.Go(func() { outs[i] = r.macAs(t, attackerUID, fs.Exe(i)) })
	}
	// The attack is in full swing: every attacker connection is reading
	// or waiting to, or (with no bound per uid) its reads hold both of
	// the agent's hashing slots.
	inFull := func() bool {
		return fs.HeldReads() >= 2 || fs.HeldReads() == 1 && socket.HashUsers(attackerUID) >= copies
	}
	for end := time.Now().Add(time.Minute); !inFull(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the attack did not start: %d reads held, %d attacker connections hashing", fs.HeldReads(), socket.HashUsers(attackerUID))
		}
	}

	// The victim, of another uid, is hashed and served during the attack.
	if got := r.macAs(t, 0, r.victimBin); got != "ok" {
		t.Fatalf("the victim, running the binary the policy names, got %s during the attack", got)
	}
	victimHashed := socket.HashedBytes() - before
	if victimHashed < r.size || !inFull() {
		t.Fatalf("the victim was served from the cache or after the attack: %d bytes hashed, %d attacker reads held, %d attacker connections hashing",
			victimHashed, fs.HeldReads(), socket.HashUsers(attackerUID))
	}

	fs.Release()
	wg.Wait()
	hashed := socket.HashedBytes() - before - victimHashed
	t.Logf("%d binaries of %d MiB from uid %d: the agent hashed %d MiB (credit %d MiB); outcomes %q",
		copies, r.size>>20, attackerUID, hashed>>20, credit>>20, outs)
	if hashed > credit {
		t.Errorf("the agent hashed %d bytes for one uid, credit %d", hashed, credit)
	}
	if !strings.Contains(r.audit.String(), "not hashed") {
		t.Errorf("no denial in the audit log says why the binary had no digest:\n%s", r.audit.String())
	}
	for i, o := range outs {
		if o != "permission_denied" {
			t.Errorf("attacker %d: %q, want permission_denied", i, o)
		}
	}
}

// TestDigestHashingDeadline: two uids run a binary from a filesystem
// whose reads by the agent never return (a FUSE mount the test serves, as
// any user may mount one), which would hold both of the agent's hashing
// slots for ever. Past the hash timeout their connections are refused,
// saying why, the reads are left behind, and a third uid's executable is
// hashed and its caller served while those reads are still blocked in
// the kernel. A uid whose read is blocked is refused at once until it
// returns.
func TestDigestHashingDeadline(t *testing.T) {
	const timeout = 2 * time.Second
	r := newDigestRig(t, socket.Limits{HashTimeout: timeout})
	fs := socket.MountStalledFS(t, 1)
	var wg sync.WaitGroup
	outs := make([]string, 2)
	for i, uid := range []uint32{attackerUID, attackerUID2} {
		wg.Go(func() { outs[i] = r.macAs(t, uid, fs.Exe(0)) })
	}
	wg.Wait()
	for i, o := range outs {
		if o != "unavailable" {
			t.Errorf("attacker %d whose read never returned: %q, want unavailable", i, o)
		}
	}
	if fs.HeldReads() != 2 {
		t.Fatalf("%d reads blocked, want both attackers'", fs.HeldReads())
	}
	if !strings.Contains(r.log.String(), "not hashed within 2s") {
		t.Errorf("the agent's log does not say why the connections were refused:\n%s", r.log.String())
	}

	before := socket.HashedBytes()
	if got := r.macAs(t, 0, r.victimBin); got != "ok" {
		t.Fatalf("the victim, running the binary the policy names, got %s while two reads were blocked", got)
	}
	if hashed := socket.HashedBytes() - before; hashed < r.size || fs.HeldReads() != 2 {
		t.Fatalf("the victim was not hashed while the reads were blocked: %d bytes hashed, %d reads blocked", hashed, fs.HeldReads())
	}

	start := time.Now()
	if got := r.macAs(t, attackerUID, fs.Exe(0)); got != "unavailable" {
		t.Errorf("a uid whose read is blocked connected again: %s, want unavailable", got)
	}
	t.Logf("a uid with a blocked read was refused in %s (hash timeout %s)", time.Since(start), timeout)
	if !strings.Contains(r.log.String(), "has not returned") {
		t.Errorf("the agent's log does not say the uid's earlier read is blocked:\n%s", r.log.String())
	}
}

// TestDigestCacheNotEvictedByOtherUID: a uid that churns through versions
// of its binary (touching it between runs) does not evict another uid's
// cached digest: the victim's next connection is not hashed again.
func TestDigestCacheNotEvictedByOtherUID(t *testing.T) {
	r := newDigestRig(t, socket.Limits{})
	// A small cache, so that a few runs fill it; at the defaults the same
	// takes 1,024 versions.
	socket.SetDigestCacheLimits(t, 2, 3)
	socket.SetHashCredit(t, 1<<40, time.Hour)
	if got := r.macAs(t, 0, r.victimBin); got != "ok" {
		t.Fatalf("the victim: %s", got)
	}
	bin := r.binary(t, "churn")
	before := socket.HashedBytes()
	const versions = 24
	for i := range versions {
		at := time.Now().Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(bin, at, at); err != nil {
			t.Fatal(err)
		}
		if got := r.macAs(t, attackerUID, bin); got != "permission_denied" {
			t.Fatalf("churn %d: %s", i, got)
		}
	}
	if hashed := socket.HashedBytes() - before; hashed < versions*r.size {
		t.Fatalf("the attacker's %d versions had %d bytes hashed, want each hashed", versions, hashed)
	}
	before = socket.HashedBytes()
	if got := r.macAs(t, 0, r.victimBin); got != "ok" {
		t.Fatalf("the victim after the churn: %s", got)
	}
	if hashed := socket.HashedBytes() - before; hashed != 0 {
		t.Errorf("the victim's binary was hashed again (%d bytes) after another uid's churn", hashed)
	}
}
