package socket_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/socket"
)

// requireRoot fails under CI and skips elsewhere when not root: moving
// processes between cgroups and reusing pids need it.
func requireRoot(t *testing.T) {
	t.Helper()
	agenttest.RequireRoot(t, "to create cgroups and reuse pids")
	if err := socket.CheckIdentitySupport(true, true); err != nil {
		t.Fatalf("this system cannot judge service identities: %v", err)
	}
}

// syncBuffer is an audit log the agent's goroutines write to.
type syncBuffer struct{ agenttest.SyncBuffer }

func (s *syncBuffer) lines() []map[string]any {
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(s.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

var tokenSeq atomic.Int32

// identityRig is an agent whose keys name services, and the binaries and
// cgroups that stand for them.
type identityRig struct {
	a                    *agenttest.Agent
	audit                *syncBuffer
	allowedBin, otherBin string
	tree                 string
	webhookUnit, apiUnit string
	webhookCG, apiCG     string // directories in tree
	userWebhookCG        string
	tag                  string
}

func newIdentityRig(t *testing.T) *identityRig {
	t.Helper()
	requireRoot(t)
	r := &identityRig{audit: new(syncBuffer), tree: cgroupTree(t)}
	dir, err := os.MkdirTemp("", "hmac-agent-identity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Two copies of one client binary at different paths; the second
	// differs by a trailing byte, so its digest differs too.
	r.allowedBin = filepath.Join(dir, "allowed", "hmac-client")
	r.otherBin = filepath.Join(dir, "other", "hmac-client")
	allowedSum := copyBinary(t, r.allowedBin, nil)
	copyBinary(t, r.otherBin, []byte{0})

	// Units named for this run, so parallel runs do not meet.
	r.webhookUnit = fmt.Sprintf("hmac-test-%d-webhook.service", os.Getpid())
	r.apiUnit = fmt.Sprintf("hmac-test-%d-api.service", os.Getpid())
	r.webhookCG = makeCgroup(t, r.tree, "system.slice/"+r.webhookUnit)
	r.apiCG = makeCgroup(t, r.tree, "system.slice/"+r.apiUnit)
	// A user's own service named like the system one: its unit is the
	// user's manager, user@4242.service.
	r.userWebhookCG = makeCgroup(t, r.tree, "user.slice/user-4242.slice/user@4242.service/app.slice/"+r.webhookUnit)

	tok := softhsm.Require(t, fmt.Sprintf("identity%d", tokenSeq.Add(1)))
	hsm, err := pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	all := agent.OpMAC | agent.OpVerify
	keys := []agent.KeyConfig{
		// webhook.service running the allowed binary: both operations.
		{Name: "webhook", Provider: "hsm", Policy: agent.Policy{Units: []string{r.webhookUnit}, Executables: []agent.Executable{{Path: r.allowedBin}}, Ops: all}},
		// api.service: verify only.
		{Name: "api-verify", Provider: "soft", Policy: agent.Policy{Units: []string{r.apiUnit}, Ops: agent.OpVerify}},
		// The allowed binary by digest may MAC; anything in api.service's
		// cgroup may verify.
		{Name: "pinned", Provider: "soft", Policy: agent.Policy{
			Executables:  []agent.Executable{{Path: r.allowedBin, SHA256: allowedSum}},
			Ops:          agent.OpMAC,
			Alternatives: []agent.Policy{{Cgroups: []string{"/system.slice/" + r.apiUnit}, Ops: agent.OpVerify}},
		}},
		// The other copy's path with the allowed copy's digest: nobody.
		{Name: "copy-digest", Provider: "soft", Policy: agent.Policy{Executables: []agent.Executable{{Path: r.otherBin, SHA256: allowedSum}}, Ops: all}},
		// A uid-only policy is not affected.
		{Name: "uid-0", Provider: "soft", Policy: agent.Policy{UIDs: []uint32{0}, Ops: all}},
	}
	r.a = agenttest.Start(t, agenttest.Options{
		Providers: []providers.Provider{hsm},
		Keys:      keys,
		Audit:     slog.New(slog.NewJSONHandler(r.audit, nil)),
	})
	ctx := context.Background()
	secret := []byte("identity-matrix-secret-0123456789")
	if _, err := hsm.ImportKey(ctx, "webhook", secret); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys[1:] {
		if _, err := r.a.Soft.ImportKey(ctx, k.Name, secret); err != nil {
			t.Fatal(err)
		}
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("identity matrix message"))
	r.tag = hex.EncodeToString(mac.Sum(nil))
	return r
}

// TestServiceIdentityMatrix runs callers from two copies of one binary,
// in cgroups standing for systemd units, against keys whose policies
// name units, cgroups and executables, across callers × keys ×
// operations, through the client, the socket, the agent, and SoftHSM2 or
// the software keystore.
func TestServiceIdentityMatrix(t *testing.T) {
	t.Run("SO_PEERPIDFD", testServiceIdentityMatrix)
	t.Run("pidfd_open", func(t *testing.T) {
		t.Cleanup(socket.WithoutPeerPidfd())
		testServiceIdentityMatrix(t)
	})
}

func testServiceIdentityMatrix(t *testing.T) {
	r := newIdentityRig(t)
	type callerCase struct {
		name, bin, cgroup string
	}
	// The user's service goes first: every caller here has one uid, whose
	// denials are audited at most 20 at once (then a few a second), and
	// the check below looks for that service's denial in the audit log.
	callers := []callerCase{
		{"user's own webhook.service, allowed binary", r.allowedBin, r.userWebhookCG},
		{"webhook.service, allowed binary", r.allowedBin, r.webhookCG},
		{"webhook.service, other copy", r.otherBin, r.webhookCG},
		{"api.service, allowed binary", r.allowedBin, r.apiCG},
		{"no unit, allowed binary", r.allowedBin, ""},
	}
	keys := []string{"webhook", "api-verify", "pinned", "copy-digest", "uid-0"}
	ops := []string{"mac", "verify_mac", "finalize", "verify"}
	ok, no := "ok", "permission_denied"
	all, none := [4]string{ok, ok, ok, ok}, [4]string{no, no, no, no}
	macOnly, verifyOnly := [4]string{ok, no, ok, no}, [4]string{no, ok, no, ok}
	want := map[string]map[string][4]string{
		callers[0].name: {"webhook": none, "api-verify": none, "pinned": macOnly, "copy-digest": none, "uid-0": all},
		callers[1].name: {"webhook": all, "api-verify": none, "pinned": macOnly, "copy-digest": none, "uid-0": all},
		callers[2].name: {"webhook": none, "api-verify": none, "pinned": none, "copy-digest": none, "uid-0": all},
		callers[3].name: {"webhook": none, "api-verify": verifyOnly, "pinned": all, "copy-digest": none, "uid-0": all},
		callers[4].name: {"webhook": none, "api-verify": none, "pinned": macOnly, "copy-digest": none, "uid-0": all},
	}
	var todo []string
	for _, k := range keys {
		for _, op := range ops {
			todo = append(todo, k+":"+op)
		}
	}
	cases, allowed, denied := 0, 0, 0
	for _, c := range callers {
		ch := startCaller(t, c.bin, "cases", "IDENTITY_SOCK="+r.a.Path, "IDENTITY_CASES="+strings.Join(todo, ","), "IDENTITY_TAG="+r.tag)
		if c.cgroup != "" {
			moveInto(t, c.cgroup, ch.pid())
		}
		got := ch.run(t)
		if len(got) != len(todo) {
			t.Fatalf("%s: %d outcomes for %d cases: %v", c.name, len(got), len(todo), got)
		}
		for i, g := range got {
			k, op := i/len(ops), i%len(ops)
			exp := want[c.name][keys[k]][op]
			cases++
			if g == ok {
				allowed++
			} else {
				denied++
			}
			if g != exp {
				t.Errorf("%s: %s = %s, want %s", c.name, todo[i], g, exp)
			}
		}
	}
	t.Logf("%d callers × %d keys × %d operations = %d cases: %d allowed, %d denied", len(callers), len(keys), len(ops), cases, allowed, denied)

	// Every audit line names the caller's unit (or cgroup) and binary.
	var sawWebhook, sawUser bool
	for _, l := range r.audit.lines() {
		if l["unit"] == nil && l["cgroup"] == nil || l["exe"] == nil {
			t.Fatalf("audit line without unit or exe: %v", l)
		}
		if l["unit"] == r.webhookUnit && l["exe"] == r.allowedBin && l["key"] == "webhook" && l["result"] == "ok" {
			sawWebhook = true
		}
		if l["unit"] == "user@4242.service" && l["key"] == "webhook" && l["result"] == no {
			sawUser = true
		}
	}
	if !sawWebhook || !sawUser {
		t.Errorf("audit log lacks webhook.service's use (%v) or the user service's denial (%v)", sawWebhook, sawUser)
	}
}

// TestStatusListsIdentity: status shows each connection's caller as read
// at connect, and only the owner and root see other users' connections.
func TestStatusListsIdentity(t *testing.T) {
	r := newIdentityRig(t)
	ctx := context.Background()
	c, err := client.Dial(ctx, r.a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	var found bool
	for _, p := range st.Peers {
		if p.PID == int32(os.Getpid()) && p.UID == 0 && p.Executable == self && p.Cgroup != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("status peers %+v lack this process (exe %s)", st.Peers, self)
	}
	other := r.a.Agent.StatusFor(ctx, agent.Peer{UID: 4242, GID: 4242, Known: true})
	if len(other.Peers) != 0 {
		t.Errorf("uid 4242 sees root's connections: %+v", other.Peers)
	}
}

// gatedListener holds connections in the listen queue until opened, so a
// test can change the world between a caller's connect and the agent's
// accept.
type gatedListener struct {
	net.Listener
	gate chan struct{}
}

func (g *gatedListener) Accept() (net.Conn, error) {
	<-g.gate
	return g.Listener.Accept()
}

// reusePID starts callers until one gets pid, by setting the kernel's
// last allocated pid just below it. Other processes may take the pid
// first, so it tries a number of times.
func reusePID(t *testing.T, pid int, start func() *caller) *caller {
	t.Helper()
	for range 200 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("setting ns_last_pid: %v", err)
		}
		c := start()
		if c.pid() == pid {
			return c
		}
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
	t.Fatalf("pid %d was not reused in 200 tries", pid)
	return nil
}

// TestPIDReuseGrantsNothing: a caller whose pid is reused by another
// process between its connect and the agent's accept is judged as
// nobody, never as the process that now has its pid; and the process
// that reused it is judged as itself.
func TestPIDReuseGrantsNothing(t *testing.T) {
	t.Run("SO_PEERPIDFD", testPIDReuse)
	// Kernels before 6.5: pidfd_open of the SO_PEERCRED pid, and a check
	// that the process holds the connection.
	t.Run("pidfd_open", func(t *testing.T) {
		t.Cleanup(socket.WithoutPeerPidfd())
		testPIDReuse(t)
	})
}

func testPIDReuse(t *testing.T) {
	r := newIdentityRig(t)
	path := filepath.Join(agenttest.SocketDir(t), "gated.sock")
	l, err := socket.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	gated := &gatedListener{Listener: l, gate: make(chan struct{})}
	defer l.Close()
	go r.a.Server.Serve(context.Background(), gated)
	env := func(key string) []string { return []string{"IDENTITY_SOCK=" + path, "IDENTITY_KEY=" + key} }

	// The control: webhook.service's allowed binary, alive when its
	// connection is accepted, may MAC. So the denials below are not the
	// gate's doing.
	control := startCaller(t, r.allowedBin, "pending", env("webhook")...)
	moveInto(t, r.webhookCG, control.pid())
	control.connect(t)

	// An attacker runs the other binary, connects, and exits; the pid
	// goes to webhook.service's binary before the agent accepts.
	attacker := startCaller(t, r.otherBin, "pending", env("webhook")...)
	attacker.connect(t)
	pid := attacker.pid()
	attacker.exit(t)
	heir := reusePID(t, pid, func() *caller { return startCaller(t, r.allowedBin, "pending", env("webhook")...) })
	moveInto(t, r.webhookCG, heir.pid())

	// webhook.service's binary connects and exits; the pid goes to the
	// other binary, which connects too.
	victim := startCaller(t, r.allowedBin, "pending", env("webhook")...)
	moveInto(t, r.webhookCG, victim.pid())
	victim.connect(t)
	vpid := victim.pid()
	victim.exit(t)
	usurper := reusePID(t, vpid, func() *caller { return startCaller(t, r.otherBin, "pending", env("webhook")...) })
	usurper.connect(t)

	close(gated.gate)
	for _, c := range []struct {
		name string
		c    *caller
		want string
	}{
		{"live webhook.service caller (control)", control, "ok"},
		{"exited caller whose pid went to webhook.service", attacker, "permission_denied"},
		{"exited webhook.service caller", victim, "permission_denied"},
		{"caller that took webhook.service's pid", usurper, "permission_denied"},
	} {
		if got := c.c.reply(t); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestNonRootAgentJudgesOtherUsers: an agent running as an ordinary user,
// as the packaged unit does, reads the unit of callers of other uids and
// judges them by it.
func TestNonRootAgentJudgesOtherUsers(t *testing.T) {
	r := newIdentityRig(t)
	dir, err := os.MkdirTemp("", "hmac-agent-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	os.Chown(dir, 1002, 1002)
	// The binaries' directories must be reachable by the other users.
	for d := filepath.Dir(r.allowedBin); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	secret := "nonroot-agent-secret-0123456789ab"
	agentCmd := exec.Command(r.allowedBin, "-test.run=^$")
	agentCmd.Env = append(os.Environ(), "HMAC_AGENT_IDENTITY_CHILD=agent", "IDENTITY_DIR="+dir, "IDENTITY_UNIT="+r.webhookUnit, "IDENTITY_SECRET="+secret)
	agentCmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1002, Gid: 1002}}
	var agentErr bytes.Buffer
	agentCmd.Stderr = &agentErr
	stdin, _ := agentCmd.StdinPipe()
	stdout, _ := agentCmd.StdoutPipe()
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := agentCmd.Wait(); err != nil {
			t.Errorf("agent as uid 1002: %v: %s", err, agentErr.String())
		}
	}()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		stdin.Close()
		agentCmd.Wait()
		t.Fatalf("agent as uid 1002 did not start: %q %v: %s", line, err, agentErr.String())
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("identity matrix message"))
	tag := hex.EncodeToString(mac.Sum(nil))
	cases := "svc:mac,svc:verify_mac,svc:finalize,svc:verify"
	for _, c := range []struct {
		name   string
		cgroup string
		want   string
	}{
		{"uid 1001 in webhook.service", r.webhookCG, "ok ok ok ok"},
		{"uid 1001 in no unit", "", "permission_denied permission_denied permission_denied permission_denied"},
	} {
		ch := startCallerAs(t, &syscall.Credential{Uid: 1001, Gid: 1001}, r.allowedBin, "cases",
			"IDENTITY_SOCK="+filepath.Join(dir, "run", "agent.sock"), "IDENTITY_CASES="+cases, "IDENTITY_TAG="+tag,
			"HMAC_AGENT_UID=1002") // the client trusts only the uids it is told to
		if c.cgroup != "" {
			moveInto(t, c.cgroup, ch.pid())
		}
		if got := strings.Join(ch.run(t), " "); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestExecutableFromAnotherMountNamespace: a caller that mounts another
// binary over the allowed one's path in a mount namespace of its own, and
// runs it from there, shows the allowed path in /proc/PID/exe; the agent
// looks the path up in its own namespace, finds another file, and does not
// count it.
func TestExecutableFromAnotherMountNamespace(t *testing.T) {
	r := newIdentityRig(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	cases := "webhook:mac,pinned:mac,uid-0:mac"
	env := []string{"IDENTITY_SOCK=" + r.a.Path, "IDENTITY_CASES=" + cases, "IDENTITY_TAG=" + r.tag}
	for _, c := range []struct {
		name   string
		script string
		want   string
	}{
		// The control: the same route, mounting the allowed binary on
		// itself, is allowed, so the denial below is the file's doing.
		{"allowed binary via its own path", "mount --bind \"$1\" \"$1\" && exec \"$1\" -test.run=^$", "ok ok ok"},
		{"other binary mounted at the allowed path", "mount --bind \"$2\" \"$1\" && exec \"$1\" -test.run=^$", "permission_denied permission_denied ok"},
	} {
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", "read go && "+c.script, "sh", r.allowedBin, r.otherBin)
		// The child reads its go-ahead byte itself once it runs the test
		// binary; sh's read consumes a line first, so send both.
		ch := startCommand(t, cmd, nil, "cases", env...)
		moveInto(t, r.webhookCG, ch.pid())
		ch.stdin.Write([]byte("go\n"))
		if got := strings.Join(ch.run(t), " "); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}
