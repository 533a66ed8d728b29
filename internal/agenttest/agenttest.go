// Package agenttest starts a real agent on a real Unix socket for tests:
// the same server, agent and providers as `hmac-agent serve`, in-process.
//
// It also runs the other local users a test plays: copies of the test
// binary run as other uids ([ChildCommand]), among them a forging agent
// ([StartForger]), and the client operations such a child performs
// ([Outcomes]).
//
// An [Agent] is safe for concurrent use, as the agent and server it holds
// are; so are a [Forger]'s methods and a [SyncBuffer].
package agenttest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
	"github.com/hmac-agent/hmac-agent/socket"
)

// Agent is a running agent.
type Agent struct {
	Path   string // the socket
	Agent  *agent.Agent
	Server *socket.Server
	Soft   *software.Provider
}

// Options adjust the agent a test starts.
type Options struct {
	Providers    []providers.Provider // after the software provider "soft"
	Keys         []agent.KeyConfig
	Limits       agent.Limits
	SocketLimits socket.Limits
	Logger       *slog.Logger
	Audit        *slog.Logger
	Observe      func(agent.Use)
	// HealthInterval is the agent's Options.HealthInterval.
	HealthInterval time.Duration
	// VersionRefresh and Now are the agent's Options of those names.
	VersionRefresh time.Duration
	Now            func() time.Time
}

// SocketDir makes a private directory with a short path: Unix socket paths
// are limited to 108 bytes, which t.TempDir() can exceed.
func SocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hmac-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Start starts an agent with a software provider named "soft" and any
// others given, listening on a new socket. It stops when the test ends.
func Start(t testing.TB, opts Options) *Agent {
	t.Helper()
	a, stop, err := Run(filepath.Join(t.TempDir(), "keys"), filepath.Join(SocketDir(t), "agent.sock"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return a
}

// Run starts an agent with its keystore in keyDir, listening on path,
// outside any one test (examples, benchmarks' TestMain). stop stops it.
func Run(keyDir, path string, opts Options) (a *Agent, stop func(), err error) {
	soft, err := software.Open("soft", keyDir)
	if err != nil {
		return nil, nil, err
	}
	ag, err := agent.New(agent.Options{
		Providers: append([]providers.Provider{soft}, opts.Providers...),
		Keys:      opts.Keys,
		Limits:    opts.Limits,
		Logger:    opts.Logger,
		Audit:     opts.Audit,
		Observe:   opts.Observe,
		Version:   "test",

		HealthInterval: opts.HealthInterval,
		VersionRefresh: opts.VersionRefresh,
		Now:            opts.Now,
	})
	if err != nil {
		return nil, nil, err
	}
	l, err := socket.Listen(path, -1)
	if err != nil {
		return nil, nil, err
	}
	srv := socket.NewServer(ag, opts.SocketLimits, opts.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		srv.Serve(ctx, l)
		close(done)
	}()
	stop = func() {
		srv.Close()
		<-done
		cancel()
		ag.Close()
	}
	return &Agent{Path: path, Agent: ag, Server: srv, Soft: soft}, stop, nil
}
