package tpm_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
)

// agentProcess is a real hmac-agent serving a TPM provider "tpm" on sw.
type agentProcess struct {
	bin, conf, sock, state string
	cmd                    *exec.Cmd
	logs                   string // the agent's output, a file
}

func newAgentProcess(t *testing.T, sw *swtpm.TPM) *agentProcess {
	t.Helper()
	dir := agenttest.SocketDir(t)
	a := &agentProcess{
		bin:   filepath.Join(dir, "hmac-agent"),
		conf:  filepath.Join(dir, "agent.toml"),
		sock:  filepath.Join(dir, "agent.sock"),
		state: filepath.Join(dir, "tpm"),
		logs:  filepath.Join(dir, "agent.log"),
	}
	if out, err := exec.Command("go", "build", "-o", a.bin, "../../cmd/hmac-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	conf := fmt.Sprintf(`socket = %q
[audit]
destination = "off"
[[provider]]
name = "soft"
type = "software"
path = %q
[[provider]]
name = "tpm"
type = "tpm"
device = %q
state_dir = %q
`, a.sock, filepath.Join(dir, "soft"), sw.Device(), a.state)
	if err := os.WriteFile(a.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.kill)
	return a
}

// start runs the agent and returns a client once it answers.
func (a *agentProcess) start(t *testing.T) *client.Client {
	t.Helper()
	logs, err := os.Create(a.logs)
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	a.cmd = exec.Command(a.bin, "serve", "--config", a.conf)
	a.cmd.Stdout, a.cmd.Stderr = logs, logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := client.Dial(context.Background(), a.sock)
		if err == nil {
			if _, err = c.Keys(context.Background()); err == nil {
				return c
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			a.kill()
			out, _ := os.ReadFile(a.logs)
			t.Fatalf("the agent did not come up: %v\n%s", err, out)
		}
	}
}

// kill SIGKILLs the agent and reaps it.
func (a *agentProcess) kill() {
	if a.cmd != nil && a.cmd.Process != nil {
		a.cmd.Process.Kill()
		a.cmd.Wait()
		a.cmd = nil
	}
}

// TestKillDuringKeyCreation: a real agent is SIGKILLed at random moments
// while keys are imported and generated on the TPM, a dozen times. After a
// restart every listed key is whole (a MAC in every hash, right for the
// imported ones), every acknowledged key is listed, every name that is not
// can be used again, and no temporary file is left.
func TestKillDuringKeyCreation(t *testing.T) {
	sw := swtpm.Require(t)
	a := newAgentProcess(t, sw)
	ctx := context.Background()
	c := a.start(t)
	// A key made without interruption says what whole is.
	whole, err := c.ImportKey(ctx, "tpm", "whole", []byte("whole"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	a.kill()
	secrets := map[string][]byte{"whole": []byte("whole")} // nil: generated
	acked := map[string]bool{"whole": true}
	var tried []string
	const rounds = 12
	for round := range rounds {
		c := a.start(t)
		var mu sync.Mutex
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				name := fmt.Sprintf("r%d-k%d", round, i)
				var secret []byte
				mu.Lock()
				tried = append(tried, name)
				if i%2 == 0 {
					secret = []byte("secret of " + name)
				}
				secrets[name] = secret
				mu.Unlock()
				var err error
				callCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
				if secret != nil {
					_, err = c.ImportKey(callCtx, "tpm", name, secret)
				} else {
					_, err = c.GenerateKey(callCtx, "tpm", name, 0)
				}
				cancel()
				if err != nil {
					return // killed
				}
				mu.Lock()
				acked[name] = true
				mu.Unlock()
			}
		}()
		time.Sleep(time.Duration(5+rand.IntN(150)) * time.Millisecond)
		a.kill()
		<-done
		c.Close()
	}
	c = a.start(t)
	defer c.Close()
	defer a.kill()
	list, err := c.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, k := range list {
		if k.Provider != "tpm" {
			continue
		}
		listed[k.Name] = true
		if !slices.Equal(k.Algorithms, whole.Algorithms) {
			t.Errorf("key %s has %v, want %v", k.Name, k.Algorithms, whole.Algorithms)
		}
		for _, alg := range whole.Algorithms {
			msg := []byte("after the crash")
			tag, err := c.MAC(ctx, k.Name, alg, msg)
			if err != nil {
				t.Errorf("key %s, %s: %v", k.Name, alg, err)
				continue
			}
			if s := secrets[k.Name]; s != nil && !bytes.Equal(tag, reference(alg, s, msg)) {
				t.Errorf("key %s, %s: wrong tag", k.Name, alg)
			}
		}
	}
	cut := 0
	for name := range acked {
		if !listed[name] {
			t.Errorf("key %s was acknowledged and is gone", name)
		}
	}
	for _, name := range tried {
		if listed[name] {
			continue
		}
		cut++
		if _, err := c.ImportKey(ctx, "tpm", name, []byte("again")); err != nil {
			t.Errorf("name %s, whose creation was cut, cannot be used: %v", name, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(a.state, "keys"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left in the state directory: %s", e.Name())
		}
	}
	t.Logf("%d kills; %d keys tried, %d acknowledged, %d listed, %d cut and made again",
		rounds, len(tried), len(acked)-1, len(listed)-1, cut)
	if cut == 0 {
		t.Log("no kill landed during a creation this time")
	}
}
