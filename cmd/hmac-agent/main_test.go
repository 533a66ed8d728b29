package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

func TestMain(m *testing.M) {
	agenttest.RunForgerIfAsked()
	testscript.Main(cleanupAfter{m}, map[string]func(){
		"hmac-agent": func() { os.Exit(run(os.Args[1:])) },
	})
}

// cleanupAfter removes the SoftHSM2 configuration and tokens the tests
// made, and the agent binary they built, once they have run:
// testscript.Main exits without returning.
type cleanupAfter struct{ m *testing.M }

func (c cleanupAfter) Run() int {
	defer softhsm.Cleanup()
	defer removeAgentBinary()
	return c.m.Run()
}

// TestScripts runs the scripts in testdata/script: each is a session at a
// shell, with the commands' expected output beside them.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			// A short socket path: Unix sockets are limited to 108
			// bytes and $WORK can be long.
			dir, err := os.MkdirTemp("", "ha-")
			if err != nil {
				return err
			}
			env.Defer(func() { os.RemoveAll(dir) })
			env.Setenv("SOCKDIR", dir)
			env.Setenv("HMAC_AGENT_SOCK", filepath.Join(dir, "run", "agent.sock"))
			env.Setenv("XDG_STATE_HOME", filepath.Join(env.WorkDir, "state"))
			env.Setenv("XDG_RUNTIME_DIR", filepath.Join(dir, "xdg"))
			// A script that fails halfway must not leave its swtpm
			// running.
			env.Defer(func() {
				if b, err := os.ReadFile(filepath.Join(env.WorkDir, "tpm", "pid")); err == nil {
					if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			return nil
		},
		// [ci] is true when CI is set: tests that need SoftHSM2 or swtpm
		// may skip without them on a developer's machine, never in CI.
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "ci":
				return os.Getenv("CI") != "", nil
			case "root":
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitsock": waitSocket,
			"chmod":    chmod,
			"trimnl":   trimNewline,
			"chown":    chown,
			"owner":    owner,
			"expand":   expand,
			"fatal":    fatal,
			"sticky":   sticky,
		},
	})
}

// waitsock PATH waits up to ten seconds for an agent to accept on PATH.
func waitSocket(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: waitsock PATH")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", ts.MkAbs(args[0]))
		if err == nil {
			c.Close()
			if neg {
				ts.Fatalf("%s accepts connections", args[0])
			}
			return
		}
		if neg && errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			if neg {
				return
			}
			ts.Fatalf("no agent on %s: %v", args[0], err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chmod MODE PATH, with MODE in octal.
func chmod(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: chmod MODE PATH")
	}
	var mode uint32
	for _, c := range args[0] {
		mode = mode*8 + uint32(c-'0')
	}
	ts.Check(os.Chmod(ts.MkAbs(args[1]), os.FileMode(mode)))
}

// trimnl FILE... removes the final newline txtar gives every file, for
// files whose exact bytes matter (keys, messages).
func trimNewline(ts *testscript.TestScript, neg bool, args []string) {
	for _, f := range args {
		b, err := os.ReadFile(ts.MkAbs(f))
		ts.Check(err)
		if n := len(b); n > 0 && b[n-1] == '\n' {
			b = b[:n-1]
		}
		ts.Check(os.WriteFile(ts.MkAbs(f), b, 0o600))
	}
}

// chown UID:GID PATH changes a file's owner without following a link.
func chown(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: chown UID:GID PATH")
	}
	u, g, _ := strings.Cut(args[0], ":")
	uid, err := strconv.Atoi(u)
	ts.Check(err)
	gid, err := strconv.Atoi(g)
	ts.Check(err)
	ts.Check(os.Lchown(ts.MkAbs(args[1]), uid, gid))
}

// owner PATH UID:GID MODE checks a file's owner and mode (octal) without
// following a link.
func owner(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: owner PATH UID:GID MODE")
	}
	fi, err := os.Lstat(ts.MkAbs(args[0]))
	ts.Check(err)
	st := fi.Sys().(*syscall.Stat_t)
	got := fmt.Sprintf("%d:%d %o", st.Uid, st.Gid, fi.Mode().Perm())
	if want := args[1] + " " + strings.TrimLeft(args[2], "0"); (got == want) == neg {
		ts.Fatalf("%s is %s, want %s", args[0], got, want)
	}
}

// expand FILE... replaces $VAR and ${VAR} in files with the script's
// environment, for configuration files that need absolute paths.
func expand(ts *testscript.TestScript, neg bool, args []string) {
	for _, f := range args {
		b, err := os.ReadFile(ts.MkAbs(f))
		ts.Check(err)
		ts.Check(os.WriteFile(ts.MkAbs(f), []byte(os.Expand(string(b), ts.Getenv)), 0o600))
	}
}

// fatal MESSAGE fails the script: for what CI must not skip.
func fatal(ts *testscript.TestScript, neg bool, args []string) {
	ts.Fatalf("%s", strings.Join(args, " "))
}

// sticky PATH makes a directory like /tmp: mode 1777.
func sticky(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: sticky PATH")
	}
	ts.Check(syscall.Chmod(ts.MkAbs(args[0]), 0o1777))
}
