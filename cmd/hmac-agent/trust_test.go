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

// forTrust is the start of each test here: it needs root, and returns
// the agent binary and a directory other users may enter holding a copy
// of the test binary (the forger).
func forTrust(t *testing.T) (dir, bin, self string) {
	t.Helper()
	agenttest.RequireRoot(t, "to run processes as other users")
	dir, self = agenttest.TestBinaryForOthers(t, "hmac-agent-cli-trust-")
	return dir, agentBinary(t), self
}

// cli runs the binary with stdin and extra environment; it returns the
// exit status and standard error.
func cli(t *testing.T, bin, stdin string, env []string, args ...string) (int, string) {
	t.Helper()
	return cliAs(t, nil, bin, stdin, env, args...)
}

// cliAs is cli run as cred (nil: as this process's user).
func cliAs(t *testing.T, cred *syscall.Credential, bin, stdin string, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := agenttest.AsUser(exec.Command(bin, args...), cred, env...)
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
	dir, bin, self := forTrust(t)
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
	dir, bin, _ := forTrust(t)
	activate := agenttest.RequireCommand(t, "systemd-socket-activate", "systemd")
	setpriv := agenttest.Setpriv(t, &syscall.Credential{Uid: 1005, Gid: 1005})
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	os.Chown(state, 1005, 1005)
	conf := filepath.Join(dir, "agent.toml")
	writeFile(t, conf, softwareConfig(filepath.Join(state, "keys"))+
		"[[key]]\nname = \"webhook\"\nprovider = \"soft\"\n[key.policy]\nusers = [0]\n", 0o644)
	sock := filepath.Join(dir, "agent.sock")
	args := append(append([]string{"-l", sock}, setpriv...), bin, "serve", "--config", conf)
	activated := startProcess(t, nil, activate, args...)
	ctx := context.Background()
	t.Setenv("HMAC_AGENT_UID", "")
	// systemd-socket-activate binds, then listens.
	c, err := activated.dial(sock)
	if err != nil {
		t.Fatalf("Dial a socket-activated agent running as uid 1005: %v", err)
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
	dir, bin, self := forTrust(t)
	activate := agenttest.RequireCommand(t, "systemd-socket-activate", "systemd")
	svc := filepath.Join(dir, "service.sock")
	args := append([]string{"-l", svc, "-E", agenttest.ForgerEnv + "=" + agenttest.ForgerSocketActivated}, agenttest.Setpriv(t, &syscall.Credential{Uid: 1005, Gid: 1005})...)
	activated := startProcess(t, nil, activate, append(args, self)...)
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
			t.Fatalf("no socket at %s:\n%s", svc, activated.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, stderr := cliAs(t, &syscall.Credential{Uid: 1006, Gid: 1006}, bin, "body", []string{"HMAC_AGENT_SOCK=" + link, "HMAC_AGENT_UID="},
		"verify", "--key", "webhook", "--alg", "sha256", "--tag", strings.Repeat("00", 32))
	if code != 2 || !strings.Contains(stderr, "untrusted agent") || !strings.Contains(stderr, squat) {
		t.Errorf("verify through another user's link to a root-made socket: exit %d, %q; want 2 and an error naming %s", code, stderr, squat)
	}
	t.Logf("refused: %s", stderr)
}
