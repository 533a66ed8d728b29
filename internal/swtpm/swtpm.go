// Package swtpm runs swtpm, a software TPM 2.0, for tests and benchmarks:
// state in a directory of the caller's, a Unix socket, stopped when done.
package swtpm

import (
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

// Pid is swtpm's process ID, from its pid file.
func (t *TPM) Pid() (int, error) {
	b, err := os.ReadFile(filepath.Join(t.Dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Pause stops swtpm with SIGSTOP: it keeps its connections and stops
// answering, as a stalled device does.
func (t *TPM) Pause() error { return t.signal(syscall.SIGSTOP) }

// Resume lets a paused swtpm go on (SIGCONT).
func (t *TPM) Resume() error { return t.signal(syscall.SIGCONT) }

func (t *TPM) signal(sig syscall.Signal) error {
	pid, err := t.Pid()
	if err != nil {
		return err
	}
	return syscall.Kill(pid, sig)
}

// Stop kills swtpm and waits for it to go.
func (t *TPM) Stop() error {
	pid, err := t.Pid()
	if err != nil {
		return err
	}
	// A paused swtpm would not act on SIGTERM.
	syscall.Kill(pid, syscall.SIGCONT)
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 500; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// Kill ends swtpm with SIGKILL, as a crash would, and waits for it to go.
// Start on the same directory brings the same TPM back.
func (t *TPM) Kill() error {
	pid, err := t.Pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	for i := 0; i < 500; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("swtpm %d outlived SIGKILL", pid)
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
