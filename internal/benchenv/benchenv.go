// Package benchenv starts a real hmac-agent process for the load and
// benchmark commands: a software keystore, and a SoftHSM2 token and a
// swtpm when they are installed, each with a key of known bytes, in a
// temporary directory removed by Close.
package benchenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
)

// Secret is the bytes of every key the environment imports, so that
// callers can check tags.
var Secret = []byte("benchmark-key-0123456789abcdef0123456789abcdef0123456789abcdef01")

// tokens numbers the SoftHSM2 tokens made in this process.
var tokens atomic.Int32

// live are the environments started and not yet closed, for StopOnSignal.
var (
	liveMu sync.Mutex
	live   = map[*Env]struct{}{}
)

// StopOnSignal makes SIGINT and SIGTERM close every environment still
// running and remove SoftHSM2's directory, then run stop and exit: a run
// cut short leaves no agent, swtpm or files behind.
func StopOnSignal(stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		liveMu.Lock()
		envs := make([]*Env, 0, len(live))
		for e := range live {
			envs = append(envs, e)
		}
		liveMu.Unlock()
		for _, e := range envs {
			e.Close()
		}
		Cleanup()
		if stop != nil {
			stop()
		}
		fmt.Fprintln(os.Stderr, "stopped:", s)
		os.Exit(1)
	}()
}

// Key names, one per provider.
const (
	SoftKey   = "soft-key"
	PKCS11Key = "hsm-key"
	TPMKey    = "tpm-key"
)

// Options choose what to start.
type Options struct {
	// Agent is the hmac-agent binary; empty means next to this program,
	// then $PATH, then built from the source tree with `go build`.
	Agent  string
	PKCS11 bool // a SoftHSM2 token, if SoftHSM2 is installed
	// PKCS11MaxCopyBytes sets the token provider's max_copy_bytes (0:
	// the default, 64 MiB; -1: no input kept for Copy).
	PKCS11MaxCopyBytes int64
	TPM                bool // a swtpm, if swtpm is installed
	// Log receives the agent's own output; nil discards it.
	Log *os.File
	// DefaultLimits leaves [limits] at the agent's defaults; otherwise
	// max_connections is raised for benchmarks with many connections.
	DefaultLimits bool
	// SocketGroup, if not zero, is socket_group, and the environment's
	// directory lets others pass, so that processes of other uids in that
	// group reach the socket.
	SocketGroup int
	// Users may use every key besides the agent's own uid
	// (default_policy).
	Users []uint32
	// Metrics is the agent's metrics listener, if not empty.
	Metrics string
	// BeforeAgent, if set, runs once the token and TPM exist and before
	// the agent starts: swtpm serves one connection at a time, so
	// whatever else must talk to it does so here.
	BeforeAgent func(*Env) error
}

// Env is a running agent.
type Env struct {
	Socket string
	Keys   []string // the keys made, SoftKey first
	Dir    string
	TPM    *swtpm.TPM
	Token  *softhsm.Token
	cmd    *exec.Cmd
}

// Start starts the agent and imports the keys.
func Start(opts Options) (*Env, error) {
	dir, err := os.MkdirTemp("", "hmac-agent-bench-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, Socket: filepath.Join(dir, "run", "agent.sock")}
	liveMu.Lock()
	live[e] = struct{}{}
	liveMu.Unlock()
	if err := e.start(opts); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *Env) start(opts Options) error {
	bin, err := agentBinary(opts.Agent, e.Dir)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf("socket = %q\n", e.Socket)
	if opts.SocketGroup != 0 {
		cfg += fmt.Sprintf("socket_group = \"%d\"\n", opts.SocketGroup)
		if err := os.Chmod(e.Dir, 0o711); err != nil {
			return err
		}
	}
	if opts.Metrics != "" {
		cfg += fmt.Sprintf("metrics = %q\n", opts.Metrics)
	}
	cfg += "[audit]\ndestination = \"off\"\n[log]\nlevel = \"warn\"\n"
	if !opts.DefaultLimits {
		cfg += "[limits]\nmax_connections = 4096\n"
	}
	if len(opts.Users) > 0 {
		users := "0"
		for _, u := range opts.Users {
			users += fmt.Sprintf(", %d", u)
		}
		cfg += fmt.Sprintf("[default_policy]\nusers = [%s]\noperations = [\"mac\", \"verify\"]\n", users)
	}
	cfg += fmt.Sprintf("[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = %q\n", filepath.Join(e.Dir, "keys"))
	if opts.PKCS11 && softhsm.Available() == nil {
		// Labels differ so that two agents started side by side
		// (hmac-bench -compare) each find their own token.
		tok, err := softhsm.Create(fmt.Sprintf("bench%d", tokens.Add(1)))
		if err != nil {
			return err
		}
		e.Token = tok
		pin := filepath.Join(e.Dir, "pin")
		if err := os.WriteFile(pin, []byte(tok.PIN), 0o600); err != nil {
			return err
		}
		cfg += fmt.Sprintf("[[provider]]\nname = \"hsm\"\ntype = \"pkcs11\"\nmodule = %q\ntoken = %q\npin_file = %q\nsessions = 16\nmax_copy_bytes = %d\n",
			softhsm.Module, tok.Label, pin, opts.PKCS11MaxCopyBytes)
	}
	if opts.TPM && swtpm.Available() == nil {
		t, err := swtpm.Start(filepath.Join(e.Dir, "tpm"))
		if err != nil {
			return err
		}
		e.TPM = t
		cfg += fmt.Sprintf("[[provider]]\nname = \"tpm\"\ntype = \"tpm\"\ndevice = %q\nstate_dir = %q\n", t.Device(), filepath.Join(e.Dir, "tpmstate"))
	}
	if opts.BeforeAgent != nil {
		if err := opts.BeforeAgent(e); err != nil {
			return err
		}
	}
	conf := filepath.Join(e.Dir, "agent.toml")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return err
	}
	e.cmd = exec.Command(bin, "serve", "--config", conf)
	e.cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+filepath.Join(e.Dir, "state"))
	e.cmd.SysProcAttr = childAttr()
	if opts.Log != nil {
		e.cmd.Stdout, e.cmd.Stderr = opts.Log, opts.Log
	}
	if err := e.cmd.Start(); err != nil {
		return err
	}
	if err := waitSocket(e.Socket, 15*time.Second); err != nil {
		return err
	}
	c, err := client.Dial(context.Background(), e.Socket)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, k := range []struct{ provider, name string }{{"soft", SoftKey}, {"hsm", PKCS11Key}, {"tpm", TPMKey}} {
		if k.provider == "hsm" && e.Token == nil || k.provider == "tpm" && e.TPM == nil {
			continue
		}
		if _, err := c.ImportKey(context.Background(), k.provider, k.name, Secret); err != nil {
			return fmt.Errorf("import %s: %w", k.name, err)
		}
		e.Keys = append(e.Keys, k.name)
	}
	return nil
}

// PID is the agent's process ID.
func (e *Env) PID() int { return e.cmd.Process.Pid }

// RSS is the agent's resident set size in MiB.
func (e *Env) RSS() (float64, error) { return RSS(e.PID()) }

// RSS reads a process's resident set size in MiB from /proc.
func RSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// Close stops the agent, swtpm and removes everything.
func (e *Env) Close() {
	liveMu.Lock()
	delete(live, e)
	liveMu.Unlock()
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { e.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			e.cmd.Process.Kill()
		}
	}
	if e.TPM != nil {
		e.TPM.Stop()
	}
	os.RemoveAll(e.Dir)
}

func waitSocket(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent did not come up on %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AgentBinary finds hmac-agent as Options.Agent does, or builds it into
// dir: for a caller that starts several environments and would build it
// once.
func AgentBinary(given, dir string) (string, error) { return agentBinary(given, dir) }

// agentBinary finds hmac-agent, or builds it into dir.
func agentBinary(given, dir string) (string, error) {
	if given != "" {
		return given, nil
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), "hmac-agent"); fileExists(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("hmac-agent"); err == nil {
		return p, nil
	}
	out := filepath.Join(dir, "hmac-agent")
	build := exec.Command("go", "build", "-o", out, "github.com/hmac-agent/hmac-agent/cmd/hmac-agent")
	if msg, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("no hmac-agent binary (give --agent), and go build failed: %v: %s", err, msg)
	}
	return out, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// Cleanup removes what SoftHSM2 left in the process's temporary
// configuration.
func Cleanup() { softhsm.Cleanup() }
