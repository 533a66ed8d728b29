package socket_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// TestMain lets copies of this test binary act as the identity tests'
// callers, and removes the SoftHSM2 tokens the tests made.
func TestMain(m *testing.M) {
	switch os.Getenv("HMAC_AGENT_IDENTITY_CHILD") {
	case "cases":
		identityCasesChild()
	case "pending":
		identityPendingChild()
	case "agent":
		identityAgentChild()
	case "hostile-agent":
		hostileAgentChild()
	case "hostile-attack":
		hostileAttackChild()
	case "stalled-fs":
		socket.StalledFSChild()
	}
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}

// identityCasesChild waits for a byte on stdin (the parent has moved it
// into its cgroup), then runs each key:operation in IDENTITY_CASES on a
// connection of its own and prints each outcome's error name.
func identityCasesChild() {
	os.Stdin.Read(make([]byte, 1))
	tag, _ := hex.DecodeString(os.Getenv("IDENTITY_TAG"))
	cases := strings.Split(os.Getenv("IDENTITY_CASES"), ",")
	for _, outcome := range agenttest.Outcomes(context.Background(), os.Getenv("IDENTITY_SOCK"), cases, []byte("identity matrix message"), tag) {
		fmt.Println(outcome)
	}
	os.Exit(0)
}

// identityPendingChild waits for a byte on stdin, connects, sends HELLO
// and a MAC of IDENTITY_KEY without waiting for any reply (the agent has
// not accepted yet), hands the connection to the parent over fd 3, and
// exits when stdin closes. The parent reads the replies.
func identityPendingChild() {
	os.Stdin.Read(make([]byte, 1))
	nc, err := net.Dial("unix", os.Getenv("IDENTITY_SOCK"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var frames []byte
	for _, m := range []wire.Message{
		{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1},
		{Type: wire.TypeMAC, ID: 1, Algorithm: uint8(providers.SHA256), Key: []byte(os.Getenv("IDENTITY_KEY")), Data: []byte("pending")},
	} {
		frames, _ = m.Append(frames)
	}
	if _, err := nc.Write(frames); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	f, _ := nc.(*net.UnixConn).File()
	if err := unix.Sendmsg(3, []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// identityAgentChild runs an agent, as whatever user it was started as,
// whose key "svc" may be used by IDENTITY_UNIT only, on a socket in
// IDENTITY_DIR that anyone may reach. It says "ready" and serves until
// stdin closes.
func identityAgentChild() {
	dir := os.Getenv("IDENTITY_DIR")
	sock := filepath.Join(dir, "run", "agent.sock")
	keys := []agent.KeyConfig{{Name: "svc", Provider: "soft", Policy: agent.Policy{Units: []string{os.Getenv("IDENTITY_UNIT")}, Ops: agent.OpMAC | agent.OpVerify}}}
	a, stop, err := agenttest.Run(filepath.Join(dir, "keys"), sock, agenttest.Options{Keys: keys})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if _, err := a.Soft.ImportKey(context.Background(), "svc", []byte(os.Getenv("IDENTITY_SECRET"))); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Chmod(filepath.Dir(sock), 0o711)
	os.Chmod(sock, 0o666)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	stop()
	os.Exit(0)
}

// caller is a child process of one of the test's binaries.
type caller struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   bytes.Buffer
	conn  *os.File // the pending child's connection, once handed over
	fds   *os.File // the parent's end of the socket pair that hands it
}

// startCaller starts bin in mode with env, waiting on stdin.
func startCaller(t *testing.T, bin, mode string, env ...string) *caller {
	t.Helper()
	return startCallerAs(t, nil, bin, mode, env...)
}

// startCallerAs starts bin in mode as the given user (nil: this one).
func startCallerAs(t *testing.T, cred *syscall.Credential, bin, mode string, env ...string) *caller {
	t.Helper()
	return startCommand(t, exec.Command(bin, "-test.run=^$"), cred, mode, env...)
}

// startCommand starts cmd, which runs a copy of the test binary in mode.
func startCommand(t *testing.T, cmd *exec.Cmd, cred *syscall.Credential, mode string, env ...string) *caller {
	t.Helper()
	c := &caller{cmd: agenttest.AsUser(cmd, cred, append([]string{"HMAC_AGENT_IDENTITY_CHILD=" + mode}, env...)...)}
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if mode == "pending" {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		c.fds = os.NewFile(uintptr(pair[0]), "parent")
		childEnd := os.NewFile(uintptr(pair[1]), "child")
		defer childEnd.Close()
		c.cmd.ExtraFiles = []*os.File{childEnd}
	}
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		if c.fds != nil {
			c.fds.Close()
		}
		if c.conn != nil {
			c.conn.Close()
		}
	})
	return c
}

func (c *caller) pid() int { return c.cmd.Process.Pid }

// run lets a "cases" caller go and returns its outcomes.
func (c *caller) run(t *testing.T) []string {
	t.Helper()
	c.stdin.Write([]byte{1})
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("caller %s: %v: %s", c.cmd.Path, err, c.out.String())
	}
	return strings.Fields(c.out.String())
}

// connect lets a "pending" caller connect and send its request, and takes
// its connection.
func (c *caller) connect(t *testing.T) {
	t.Helper()
	c.stdin.Write([]byte{1})
	// Close-on-exec: a later caller must not inherit the connection
	// (holding it would make that caller the peer on older kernels).
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(c.fds.Fd()), make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("receiving the caller's connection: %v (%s)", err, c.out.String())
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v", err)
	}
	c.conn = os.NewFile(uintptr(fds[0]), "caller-conn")
}

// exit makes a pending caller exit and reaps it, freeing its pid.
func (c *caller) exit(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("caller: %v: %s", err, c.out.String())
	}
}

// reply reads a pending caller's MAC reply: its error name, or "ok".
func (c *caller) reply(t *testing.T) string {
	t.Helper()
	nc, err := net.FileConn(c.conn)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fr := wire.NewFrameReader(bufio.NewReader(nc), 1<<20)
	for {
		body, err := fr.Next()
		if err != nil {
			t.Fatalf("reading the reply: %v", err)
		}
		var m wire.Message
		if err := wire.Decode(body, &m); err != nil {
			t.Fatal(err)
		}
		switch {
		case m.Type == wire.TypeHelloReply:
			continue
		case m.Type == wire.TypeTag && m.ID == 1:
			return "ok"
		case m.Type == wire.TypeError && m.ID == 1:
			return providers.ErrorName(m.Code.Sentinel())
		default:
			t.Fatalf("unexpected reply %s", m.Type)
		}
	}
}

// copyBinary copies the test binary to path, appending extra bytes (an
// ELF file runs the same with bytes after its end), so two copies can
// differ in digest but not in behaviour.
func copyBinary(t *testing.T, path string, extra []byte) []byte {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(agenttest.CopyTestBinary(t, path, extra))
	return sum[:]
}

// cgroupTree is the mounted hierarchy the agent reads units from: the v1
// name=systemd one where there is one, else cgroup v2.
func cgroupTree(t *testing.T) string {
	t.Helper()
	self, _ := os.ReadFile("/proc/self/cgroup")
	wantNamed := bytes.Contains(self, []byte(":name=systemd:"))
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(info), "\n") {
		fields := strings.Fields(line)
		i := strings.Index(line, " - ")
		if len(fields) < 5 || i < 0 {
			continue
		}
		after := strings.Fields(line[i+3:])
		if len(after) < 3 {
			continue
		}
		switch {
		case wantNamed && after[0] == "cgroup" && strings.Contains(","+after[2]+",", ",name=systemd,"):
			return fields[4]
		case !wantNamed && after[0] == "cgroup2":
			return fields[4]
		}
	}
	t.Fatal("no writable systemd cgroup hierarchy is mounted")
	return ""
}

// makeCgroup creates rel (and its parents) in tree and removes what it
// created when the test ends, after its callers are gone.
func makeCgroup(t *testing.T, tree, rel string) string {
	t.Helper()
	var made []string
	dir := tree
	for part := range strings.SplitSeq(strings.Trim(rel, "/"), "/") {
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err == nil {
			made = append(made, dir)
		} else if !os.IsExist(err) {
			t.Fatalf("creating cgroup %s: %v", dir, err)
		}
	}
	t.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			os.Remove(made[i])
		}
	})
	return dir
}

func moveInto(t *testing.T, cgroup string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("moving %d into %s: %v", pid, cgroup, err)
	}
}
