package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// needRoot fails under CI and skips elsewhere when the test cannot run
// processes as other users.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the tests do not run as root; this test runs processes as other users")
		}
		t.Skip("needs root to run processes as other users")
	}
}

// buildForTrust builds the binary and copies the test binary (the forger)
// into a directory other users may enter.
func buildForTrust(t *testing.T) (dir, bin, self string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hmac-agent-cli-trust-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o711)
	bin = filepath.Join(dir, "hmac-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	self = filepath.Join(dir, "forger")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(self, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin, self
}

// cli runs the binary with stdin and extra environment; it returns the
// exit status and standard error.
func cli(t *testing.T, bin, stdin string, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// TestCLIRefusesAgentOfAnotherUser: with a forging agent of another user
// at HMAC_AGENT_SOCK, `verify` fails (exit 2) instead of accepting the
// forged tag, `keys import NAME -` fails instead of handing over the key,
// and the forger receives nothing. Told to trust that user
// (HMAC_AGENT_UID), the same commands believe it: the forger is
// convincing, and only the check stops it.
func TestCLIRefusesAgentOfAnotherUser(t *testing.T) {
	needRoot(t)
	dir, bin, self := buildForTrust(t)
	evil := filepath.Join(dir, "evil")
	os.Mkdir(evil, 0o755)
	if err := os.Chown(evil, 1005, 1005); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(evil, "agent.sock")
	env := []string{"HMAC_AGENT_SOCK=" + path, "HMAC_AGENT_UID="}
	forged := strings.Repeat("00", 32)
	verify := []string{"verify", "--key", "webhook", "--alg", "sha256", "--tag", forged}
	importKey := []string{"keys", "import", "stolen", "-"}

	f := agenttest.StartForger(t, self, path, 1005, 1005)
	code, stderr := cli(t, bin, "body", env, verify...)
	if code != 2 || !strings.Contains(stderr, "untrusted agent") || !strings.Contains(stderr, path) || !strings.Contains(stderr, "uid 1005") {
		t.Errorf("verify against another user's agent: exit %d, %q; want 2 and an error naming the path and uid", code, stderr)
	}
	code, stderr = cli(t, bin, "the-secret-key-bytes", env, importKey...)
	if code == 0 || !strings.Contains(stderr, "untrusted agent") {
		t.Errorf("keys import against another user's agent: exit %d, %q", code, stderr)
	}
	f.Stop()
	if accepted, received := f.Record(); accepted != 2 || received != 0 {
		t.Errorf("the forger accepted %d connections and received %d bytes; want 2 and 0", accepted, received)
	}

	f = agenttest.StartForger(t, self, path, 1005, 1005)
	trusting := append(env, "HMAC_AGENT_UID=1005")
	if code, stderr := cli(t, bin, "body", trusting, verify...); code != 0 {
		t.Errorf("verify trusting uid 1005: exit %d, %q; the forger should have been believed", code, stderr)
	}
	if code, stderr := cli(t, bin, "the-secret-key-bytes", trusting, importKey...); code != 0 {
		t.Errorf("keys import trusting uid 1005: exit %d, %q", code, stderr)
	}
	f.Stop()
	if _, received := f.Record(); received == 0 {
		t.Error("the trusted forger received nothing")
	}
}

// TestSocketActivationAgentAsAnotherUser is the packaged units' case: the
// socket is made by systemd (root), the agent runs as a user of its own
// (User=). The socket's credentials are systemd's, so a client of a third
// user trusts it with no HMAC_AGENT_UID.
func TestSocketActivationAgentAsAnotherUser(t *testing.T) {
	needRoot(t)
	lookPath := func(name, pkg string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("CI is set and %s (package %s) is missing", name, pkg)
			}
			t.Skipf("%s is not installed", name)
		}
		return p
	}
	activate := lookPath("systemd-socket-activate", "systemd")
	setpriv := lookPath("setpriv", "util-linux")
	dir, bin, _ := buildForTrust(t)
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	os.Chown(state, 1005, 1005)
	conf := filepath.Join(dir, "agent.toml")
	text := "[audit]\ndestination = \"off\"\n[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = \"" + filepath.Join(state, "keys") + "\"\n" +
		"[[key]]\nname = \"webhook\"\nprovider = \"soft\"\n[key.policy]\nusers = [0]\n"
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	var logs bytes.Buffer
	cmd := exec.Command(activate, "-l", sock, setpriv, "--reuid=1005", "--regid=1005", "--clear-groups", bin, "serve", "--config", conf)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	ctx := context.Background()
	t.Setenv("HMAC_AGENT_UID", "")
	var c *client.Client
	var err error
	for i := 0; ; i++ { // systemd-socket-activate binds, then listens
		if c, err = client.Dial(ctx, sock); err == nil || i > 500 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("Dial a socket-activated agent running as uid 1005: %v\n%s", err, logs.String())
	}
	defer c.Close()
	if _, err := c.ImportKey(ctx, "soft", "webhook", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	got, err := c.MAC(ctx, "webhook", client.SHA256, []byte("msg"))
	if err != nil || !bytes.Equal(got, tag([]byte("secret"), []byte("msg"))) {
		t.Fatalf("MAC: %x %v", got, err)
	}
	pid := agentPID(t, sock)
	status, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if !strings.Contains(string(status), "\nUid:\t1005\t") {
		t.Errorf("the agent (pid %d) does not run as uid 1005:\n%s", pid, status)
	}
}

// TestSocketActivatedImpostor: root's credentials are those of every
// socket systemd makes, among them sockets it hands to services that run
// as other users. Uid 1005 runs such a service (here a forger behind
// systemd-socket-activate) and links its socket where a client looks for
// the agent, in a directory of its own, as /tmp/hmac-agent-$UID would
// be. A client of uid 1006 must refuse it rather than accept a forged
// tag, though the listener's uid is 0; the real socket-activated agent,
// in a directory root owns, is still trusted
// (TestSocketActivationAgentAsAnotherUser).
func TestSocketActivatedImpostor(t *testing.T) {
	needRoot(t)
	lookPath := func(name, pkg string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("CI is set and %s (package %s) is missing", name, pkg)
			}
			t.Skipf("%s is not installed", name)
		}
		return p
	}
	activate := lookPath("systemd-socket-activate", "systemd")
	setpriv := lookPath("setpriv", "util-linux")
	dir, bin, self := buildForTrust(t)
	svc := filepath.Join(dir, "service.sock")
	var logs bytes.Buffer
	cmd := exec.Command(activate, "-l", svc, "-E", agenttest.ForgerEnv+"="+agenttest.ForgerSocketActivated,
		setpriv, "--reuid=1005", "--regid=1005", "--clear-groups", self)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	squat := filepath.Join(dir, "hmac-agent-1006")
	if err := os.Mkdir(squat, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(squat, "agent.sock")
	if err := os.Symlink(svc, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{squat, link} {
		if err := os.Lchown(p, 1005, 1005); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; ; i++ { // systemd-socket-activate binds, then listens
		if _, err := os.Stat(svc); err == nil {
			os.Chmod(svc, 0o666) // systemd's SocketMode= default
			break
		}
		if i > 500 {
			t.Fatalf("no socket at %s:\n%s", svc, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	victim := exec.Command(setpriv, "--reuid=1006", "--regid=1006", "--clear-groups",
		bin, "verify", "--key", "webhook", "--alg", "sha256", "--tag", strings.Repeat("00", 32))
	victim.Env = append(os.Environ(), "HMAC_AGENT_SOCK="+link, "HMAC_AGENT_UID=")
	victim.Stdin = strings.NewReader("body")
	var stderr bytes.Buffer
	victim.Stderr = &stderr
	err := victim.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != 2 || !strings.Contains(stderr.String(), "untrusted agent") || !strings.Contains(stderr.String(), squat) {
		t.Errorf("verify through another user's link to a root-made socket: exit %d, %q; want 2 and an error naming %s", code, stderr.String(), squat)
	}
	t.Logf("refused: %s", stderr.String())
}
