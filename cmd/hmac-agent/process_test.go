package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// The tests here that need the agent as a process of its own (to kill it,
// signal it, read its memory, or run it as another user) share one build
// of it and the helpers below.

var agentBuild struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// agentBinary builds hmac-agent from this package, once per test process,
// into a directory that other users may pass through, and returns its
// path. TestMain removes it.
func agentBinary(t *testing.T) string {
	t.Helper()
	b := &agentBuild
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "hmac-agent-bin-"); b.err != nil {
			return
		}
		if b.err = os.Chmod(b.dir, 0o711); b.err != nil {
			return
		}
		b.bin = filepath.Join(b.dir, "hmac-agent")
		if out, err := exec.Command("go", "build", "-o", b.bin, ".").CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}

// removeAgentBinary removes what agentBinary built.
func removeAgentBinary() {
	if agentBuild.dir != "" {
		os.RemoveAll(agentBuild.dir)
	}
}

// writeFile writes a file a test's agent reads, failing the test if it
// cannot.
func writeFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

// softwareConfig is a configuration with the audit log off and one
// software provider, "soft", keeping its keys in keys.
func softwareConfig(keys string) string {
	return fmt.Sprintf("[audit]\ndestination = \"off\"\n[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = %q\n", keys)
}

// pkcs11Config is a configuration with the audit log off and one PKCS#11
// provider, "hsm", on tok through module, with the lines of settings
// added to its table. It writes the token's PIN to a file in dir.
func pkcs11Config(t *testing.T, dir, module string, tok *softhsm.Token, settings ...string) string {
	t.Helper()
	pin := filepath.Join(dir, "pin")
	writeFile(t, pin, tok.PIN, 0o600)
	text := fmt.Sprintf("[audit]\ndestination = \"off\"\n[[provider]]\nname = \"hsm\"\ntype = \"pkcs11\"\nmodule = %q\ntoken = %q\npin_file = %q\n", module, tok.Label, pin)
	for _, s := range settings {
		text += s + "\n"
	}
	return text
}

// process is a program a test runs (the agent, or a program that starts
// it, such as systemd-socket-activate), with its output kept. It is
// stopped when the test ends, and its output logged if the test failed.
type process struct {
	cmd  *exec.Cmd
	out  agenttest.SyncBuffer
	done chan struct{} // closed once it has exited
	err  error         // how it exited, once done is closed
}

// startProcess runs name with args, with env added to this process's
// environment.
func startProcess(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("output of %s:\n%s", p.cmd, p.logs())
		}
	})
	return p
}

// startAgent runs `hmac-agent serve` with args, with env added to this
// process's environment.
func startAgent(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	return startProcess(t, env, agentBinary(t), append([]string{"serve"}, args...)...)
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// logs is what the process has written to its standard output and error
// so far.
func (p *process) logs() string { return p.out.String() }

// wait waits for the process to exit and returns how it did.
func (p *process) wait() error {
	<-p.done
	return p.err
}

// stop sends the process sig and waits for it to exit, killing it if it
// has not ten seconds later, and returns how it exited. It may be called
// after the process exited.
func (p *process) stop(sig os.Signal) error {
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// dial connects a client to the agent on sock, trying until the agent
// answers. It gives up when the process exits or after ten seconds; the
// error then holds the process's output.
func (p *process) dial(sock string) (*client.Client, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := client.Dial(context.Background(), sock)
		if err == nil {
			return c, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited (%v) before it answered on %s: %v\n%s", p.cmd.Path, p.err, sock, err, p.logs())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no agent answered on %s: %v\n%s", sock, err, p.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mustDial is dial, failing the test if it fails. The client is closed
// when the test ends.
func (p *process) mustDial(t *testing.T, sock string) *client.Client {
	t.Helper()
	c, err := p.dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitListening waits until something accepts connections on the Unix
// socket path, failing the test if the process exits first or twenty
// seconds pass.
func (p *process) waitListening(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before anything listened on %s:\n%s", p.cmd.Path, p.err, path, p.logs())
		default:
		}
	}
	t.Fatalf("nothing listens on %s:\n%s", path, p.logs())
}
