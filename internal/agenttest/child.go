package agenttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
)

// RequireRoot skips the test unless it runs as root, and fails it instead
// when CI is set: a test that plays other local users must run in CI. why
// completes "needs root": "to run clients as other users".
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but the tests do not run as root; the test needs root %s", why)
	}
	t.Skipf("needs root %s", why)
}

// RequireCommand returns the path of the program name, or skips the test
// when it is not installed, and fails it instead when CI is set. pkg is
// the Debian package that has it.
func RequireCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and %s (package %s) is missing", name, pkg)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

// SharedDir makes a new directory that other users may pass through but
// not list (mode 0711), for a test whose children run as other users. It
// is removed when the test ends.
func SharedDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// CopyTestBinary copies this test binary to path, where any user may run
// it, with extra appended (an ELF file runs the same with bytes after its
// end, so two copies can differ in digest but not in behaviour). It
// returns the bytes it wrote. The test binary as go test leaves it may lie
// where other users cannot reach it.
func CopyTestBinary(t testing.TB, path string, extra []byte) []byte {
	t.Helper()
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, extra...)
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBinaryForOthers makes a [SharedDir] and copies this test binary into
// it for other users to run: the usual start of a test whose children run
// as other users.
func TestBinaryForOthers(t testing.TB, prefix string) (dir, bin string) {
	t.Helper()
	dir = SharedDir(t, prefix)
	bin = filepath.Join(dir, "child")
	CopyTestBinary(t, bin, nil)
	return dir, bin
}

// ChildCommand is a command that runs bin, a copy of this test binary, as
// cred (nil: as this process's user), with env added to this process's
// environment and no tests to run: the binary's TestMain reads env and
// plays the part it names.
func ChildCommand(bin string, cred *syscall.Credential, env ...string) *exec.Cmd {
	return AsUser(exec.Command(bin, "-test.run=^$"), cred, env...)
}

// AsUser makes cmd run as cred (nil: as this process's user) with env
// added to this process's environment, and returns it: for a copy of this
// test binary run through another program (unshare, sh), or for another
// program run as another user.
func AsUser(cmd *exec.Cmd, cred *syscall.Credential, env ...string) *exec.Cmd {
	if cred != nil {
		// Groups nil clears the supplementary groups, as setpriv's
		// --clear-groups does: the child has only what cred gives it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// Setpriv is the command line that runs what follows it as cred, for a
// child that another program starts (systemd-socket-activate), which
// cannot be given credentials through [exec.Cmd]. It skips the test
// without setpriv, or fails it under CI, as [RequireCommand] does.
func Setpriv(t testing.TB, cred *syscall.Credential) []string {
	t.Helper()
	args := []string{
		RequireCommand(t, "setpriv", "util-linux"),
		fmt.Sprintf("--reuid=%d", cred.Uid),
		fmt.Sprintf("--regid=%d", cred.Gid),
	}
	if len(cred.Groups) == 0 {
		return append(args, "--clear-groups")
	}
	groups := make([]string, len(cred.Groups))
	for i, g := range cred.Groups {
		groups[i] = fmt.Sprint(g)
	}
	return append(args, "--groups="+strings.Join(groups, ","))
}

// Outcomes runs each "KEY:OPERATION" of cases against the agent at sock,
// each on a connection of its own, and returns the error name of each
// outcome ([providers.ErrorName]: "ok" when it succeeded). The operations
// are mac and verify_mac (one-shots on msg, verify_mac against tag),
// finalize and verify (a context given msg, then finalized or verified
// against tag), generate (a key of that name, where the agent chooses)
// and delete. A child running as another user prints them for its parent.
func Outcomes(ctx context.Context, sock string, cases []string, msg, tag []byte) []string {
	var names []string
	for _, kv := range cases {
		key, op, _ := strings.Cut(kv, ":")
		c, err := client.Dial(ctx, sock)
		if err == nil {
			err = operate(ctx, c, key, op, msg, tag)
			c.Close()
		}
		names = append(names, providers.ErrorName(err))
	}
	return names
}

func operate(ctx context.Context, c *client.Client, key, op string, msg, tag []byte) error {
	switch op {
	case "mac":
		_, err := c.MAC(ctx, key, client.SHA256, msg)
		return err
	case "verify_mac":
		return c.VerifyMAC(ctx, key, client.SHA256, msg, tag)
	case "finalize", "verify":
		h, err := c.New(ctx, key, client.SHA256)
		if err != nil {
			return err
		}
		h.Update(msg)
		if op == "finalize" {
			_, err = h.Finalize(ctx)
			return err
		}
		return h.Verify(ctx, tag)
	case "generate":
		_, err := c.GenerateKey(ctx, "", key, 0)
		return err
	case "delete":
		return c.DeleteKey(ctx, "", key)
	}
	return fmt.Errorf("unknown operation %q", op)
}

// Listen serves the agent on one more socket, at path, made by
// socket.Listen with group gid: a socket other users in that group may
// reach. It stops with the agent.
func (a *Agent) Listen(t testing.TB, path string, gid int) {
	t.Helper()
	l, err := socket.Listen(path, gid)
	if err != nil {
		t.Fatal(err)
	}
	go a.Server.Serve(context.Background(), l)
}
