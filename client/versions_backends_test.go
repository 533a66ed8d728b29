package client_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// versionsBackend is a provider the key version tests run on through the
// socket: the software keystore, a SoftHSM2 token or a swtpm.
type versionsBackend struct {
	// provider is the provider's name in the agent.
	provider string
	// prepare sets up the device for one test (a token, a swtpm) and
	// returns open, which opens a new provider on the same storage each
	// time an agent starts; the agent closes it when it stops. open
	// returns nil for the keystore every agent from agenttest has.
	prepare func(t *testing.T) (open func(t *testing.T) providers.Provider)
}

// versionsBackends are filled in by file: the PKCS#11 one needs cgo.
var versionsBackends = []versionsBackend{
	{provider: "soft", prepare: func(*testing.T) func(*testing.T) providers.Provider {
		return func(*testing.T) providers.Provider { return nil }
	}},
	{provider: "tpm", prepare: prepareTPM},
}

func prepareTPM(t *testing.T) func(*testing.T) providers.Provider {
	dev := swtpm.Require(t)
	state := filepath.Join(t.TempDir(), "tpm-state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	return func(t *testing.T) providers.Provider {
		p, err := tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: dev.Device(), StateDir: state})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// versionsAgent is an agent on one backend whose storage outlives it, so
// that a test can stop it and start another on the same keys.
type versionsAgent struct {
	*agenttest.Agent
	// Provider is the backend's provider in this agent.
	Provider providers.Provider
	stop     func()
}

// runVersions runs test on every backend, each in its own subtest.
func runVersions(t *testing.T, test func(t *testing.T, b versionsBackend, start func(agenttest.Options) *versionsAgent)) {
	for _, b := range versionsBackends {
		t.Run(b.provider, func(t *testing.T) {
			open := b.prepare(t)
			keys := filepath.Join(t.TempDir(), "keys")
			sock := filepath.Join(agenttest.SocketDir(t), "agent.sock")
			start := func(opts agenttest.Options) *versionsAgent {
				t.Helper()
				p := open(t)
				if p != nil {
					opts.Providers = append(opts.Providers, p)
				}
				a, stop, err := agenttest.Run(keys, sock, opts)
				if err != nil {
					if p != nil {
						p.Close()
					}
					t.Fatal(err)
				}
				va := &versionsAgent{Agent: a, Provider: p, stop: stop}
				if p == nil {
					va.Provider = a.Soft
				}
				t.Cleanup(va.Stop)
				return va
			}
			test(t, b, start)
		})
	}
}

// Stop stops the agent; a second call does nothing.
func (a *versionsAgent) Stop() {
	if a.stop != nil {
		a.stop()
		a.stop = nil
	}
}
