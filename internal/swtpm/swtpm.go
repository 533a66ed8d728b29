// Package swtpm runs swtpm, a software TPM 2.0, for tests and benchmarks:
// state in a directory of the caller's, a Unix socket, stopped when done.
package swtpm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TPM is a running swtpm.
type TPM struct {
	Dir    string // state, socket and pid file
	Socket string
}

// Device is the provider's device string for the TPM.
func (t *TPM) Device() string { return "unix:" + t.Socket }

// Available says whether swtpm is installed, and if not, why.
func Available() error {
	if _, err := exec.LookPath("swtpm"); err != nil {
		return fmt.Errorf("swtpm: %w (apt-get install swtpm)", err)
	}
	return nil
}

// Start runs swtpm with its state in dir (created if missing; a new
// directory is a new TPM, an old one the same TPM after a restart).
func Start(dir string) (*TPM, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	t := &TPM{Dir: dir, Socket: filepath.Join(dir, "sock")}
	os.Remove(t.Socket)
	out, err := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+t.Socket,
		"--ctrl", "type=unixio,path="+t.Socket+".ctrl",
		"--flags", "not-need-init,startup-clear",
		"--pid", "file="+filepath.Join(dir, "pid"),
		"--daemon").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("swtpm: %v: %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", t.Socket)
		if err == nil {
			c.Close()
			return t, nil
		}
		if time.Now().After(deadline) {
			t.Stop()
			return nil, fmt.Errorf("swtpm did not come up on %s: %v", t.Socket, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// PID is swtpm's process id, from its pid file.
func (t *TPM) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(t.Dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Pause stops swtpm with SIGSTOP: it keeps its connections and answers
// nothing, as a hung device does, until Continue.
func (t *TPM) Pause() error { return t.signal(syscall.SIGSTOP) }

// Continue resumes a paused swtpm (SIGCONT).
func (t *TPM) Continue() error { return t.signal(syscall.SIGCONT) }

func (t *TPM) signal(sig syscall.Signal) error {
	pid, err := t.PID()
	if err != nil {
		return err
	}
	return syscall.Kill(pid, sig)
}

// Kill kills swtpm with SIGKILL, as a crash would, and waits for it to
// go. Start on the same directory brings the same TPM back.
func (t *TPM) Kill() error {
	pid, err := t.PID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return waitGone(pid)
}

// waitGone waits up to 5 s for a process to go. A zombie has gone: swtpm
// runs as a daemon, and whoever inherits it may be slow to reap it.
func waitGone(pid int) error {
	for range 500 {
		if !alive(pid) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("swtpm (pid %d) is still there", pid)
}

// alive reports whether pid runs (or is stopped), and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses, which may
	// itself hold spaces or parentheses.
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// Stop kills swtpm and waits for it to go. A paused swtpm is continued
// first, so that it can go; one that does not within waitGone's time is
// killed, and waited for again: a caller removes the state directory
// next, which a swtpm still running would write into.
func (t *TPM) Stop() error {
	pid, err := t.PID()
	if err != nil {
		return err
	}
	syscall.Kill(pid, syscall.SIGCONT)
	syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(pid) == nil {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return waitGone(pid)
}

// Restart stops swtpm and starts it again on the same state: the same TPM,
// as after a reboot, with everything loaded in it gone.
func (t *TPM) Restart() error {
	if err := t.Stop(); err != nil {
		return err
	}
	nt, err := Start(t.Dir)
	if err != nil {
		return err
	}
	*t = *nt
	return nil
}

// Require starts a swtpm for a test and stops it when the test ends.
// Without swtpm the test is skipped, unless CI is set: then it fails, so a
// CI machine missing the package cannot pass by skipping.
func Require(t testing.TB) *TPM {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and swtpm is missing: %v", err)
		}
		t.Skipf("swtpm is not installed: %v", err)
	}
	dir, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := Start(dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tpm.Stop()
		os.RemoveAll(dir)
	})
	return tpm
}
