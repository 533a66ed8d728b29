package socket_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
)

// The fake is what a socket test that is about the socket serves: framing,
// handshake, ordering, limits, deadlines and error replies need an agent
// that answers, not keys in a provider. Its one key, "k", is HMAC-SHA256
// with testSecret in two guises: "k" answers inline, as a software key
// does, and "slow-key" waits for delay (and, for an update, the gate) on
// the caller's goroutine, as a device does. An update of "fail" makes the
// context's sticky error ErrUnavailable.
var (
	_ socket.Agent[*fakeSession] = (*fakeAgent)(nil)
	_ socket.Session             = (*fakeSession)(nil)
)

type fakeAgent struct {
	socket.Keys // nil: a method not written below is not used by the tests
	delay       time.Duration
	gate        chan struct{} // when not nil, a slow update waits to receive from it
	// With keep, Update keeps a reference to each frame buffer it is
	// given, as a context that keeps its input does, in held.
	keep bool
	mu   sync.Mutex
	held []heldInput
}

// heldInput is an update's input kept in its frame buffer, and what it
// was when it arrived.
type heldInput struct {
	b          *frame.Buffer
	data, want []byte
}

type fakeSession struct {
	a        *fakeAgent
	mu       sync.Mutex
	contexts map[uint32][]byte // the input of each open context
	slow     map[uint32]bool   // the contexts on "slow-key"
	failed   map[uint32]error
}

type fakeRig struct {
	Path   string
	Server *socket.Server
}

// startFake serves f with limits on a socket of the test's own.
func startFake(t *testing.T, f *fakeAgent, limits socket.Limits) *fakeRig {
	t.Helper()
	path := filepath.Join(agenttest.SocketDir(t), "fake.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := socket.NewServer(f, limits, nil)
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	return &fakeRig{Path: path, Server: srv}
}

func (a *fakeAgent) NewSession(agent.Peer) *fakeSession {
	return &fakeSession{a: a, contexts: map[uint32][]byte{}, slow: map[uint32]bool{}, failed: map[uint32]error{}}
}
func (a *fakeAgent) IdentityNeed() agent.IdentityNeed { return agent.NeedNone }
func (a *fakeAgent) Limits() agent.Limits             { return agent.DefaultLimits }
func (a *fakeAgent) MayManage(agent.Peer) bool        { return true }
func (a *fakeAgent) GenerateKey(_ context.Context, _ agent.Peer, _, name string, _ int) (providers.KeyInfo, error) {
	if name == "" {
		return providers.KeyInfo{}, providers.Publicf(providers.ErrInvalidArgument, "no key name")
	}
	return providers.KeyInfo{}, providers.ErrNotSupported
}

// wait is a slow key's call.
func (a *fakeAgent) wait(key []byte) {
	if string(key) == "slow-key" {
		time.Sleep(a.delay)
	}
}

func (s *fakeSession) Budget() *providers.Budget { return nil }
func (s *fakeSession) Immediate(key []byte) bool { return string(key) != "slow-key" }
func (s *fakeSession) ContextImmediate(id uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, open := s.contexts[id]
	return open && !s.slow[id]
}

func (s *fakeSession) Contexts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.contexts)
}

func (s *fakeSession) IsOpen(id uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.contexts[id]
	return ok
}

// check answers what the agent would for a key name and algorithm.
func check(key []byte, alg providers.Algorithm) error {
	switch {
	case alg != providers.SHA256:
		return providers.Publicf(providers.ErrUnsupportedAlgorithm, "not %s", alg)
	case string(key) != "k" && string(key) != "slow-key":
		return providers.Publicf(providers.ErrKeyNotFound, "key %q not found", key)
	}
	return nil
}

func (s *fakeSession) Open(_ context.Context, id uint32, key []byte, alg providers.Algorithm) error {
	if err := check(key, alg); err != nil {
		return err
	}
	s.a.wait(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, used := s.contexts[id]; used {
		return providers.Publicf(providers.ErrInvalidArgument, "context %d is in use", id)
	}
	s.contexts[id] = []byte{}
	s.slow[id] = string(key) == "slow-key"
	return nil
}

// input returns context id's input, removing the context with remove.
func (s *fakeSession) input(id uint32, remove bool) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.contexts[id]
	if !ok {
		return nil, providers.Publicf(providers.ErrUnknownContext, "context %d is not open", id)
	}
	err := s.failed[id]
	if remove {
		delete(s.contexts, id)
		delete(s.failed, id)
	}
	return in, err
}

func (s *fakeSession) Update(_ context.Context, id uint32, p []byte, b *frame.Buffer) error {
	s.mu.Lock()
	_, open := s.contexts[id]
	s.mu.Unlock()
	if !open { // the one error an update answers; others stick
		return providers.Publicf(providers.ErrUnknownContext, "context %d is not open", id)
	}
	if s.a.gate != nil {
		<-s.a.gate
	}
	if b != nil && s.a.keep {
		s.a.mu.Lock()
		s.a.held = append(s.a.held, heldInput{b.Retain(), p, slices.Clone(p)})
		s.a.mu.Unlock()
	}
	if string(p) == "fail" {
		s.Fail(id, providers.Publicf(providers.ErrUnavailable, "the device failed"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.contexts[id]; ok {
		s.contexts[id] = append(in, p...)
	}
	return nil
}

func (s *fakeSession) Fail(id uint32, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed[id] == nil {
		s.failed[id] = err
	}
}

func (s *fakeSession) Copy(_ context.Context, id, newID uint32) error {
	in, err := s.input(id, false)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.contexts[newID] = slices.Clone(in)
	s.slow[newID] = s.slow[id]
	return nil
}

func (s *fakeSession) FinalizeVersion(_ context.Context, id uint32, dst []byte) ([]byte, int, error) {
	in, err := s.input(id, true)
	if err != nil {
		return nil, 0, err
	}
	return append(dst, sum(in)...), 1, nil
}

func (s *fakeSession) VerifyVersion(ctx context.Context, id uint32, tag []byte) (int, error) {
	want, _, err := s.FinalizeVersion(ctx, id, nil)
	if err == nil && !hmac.Equal(want, tag) {
		err = providers.ErrInvalidSignature
	}
	return 1, err
}

func (s *fakeSession) Abandon(id uint32) { s.input(id, true) }

func (s *fakeSession) MACVersion(_ context.Context, key []byte, alg providers.Algorithm, data []byte, _ *frame.Buffer, dst []byte) ([]byte, int, error) {
	if err := check(key, alg); err != nil {
		return nil, 0, err
	}
	s.a.wait(key)
	return append(dst, sum(data)...), 1, nil
}

func (s *fakeSession) VerifyMACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, _ *frame.Buffer, tag []byte) (int, error) {
	want, v, err := s.MACVersion(ctx, key, alg, data, nil, nil)
	if err == nil && !hmac.Equal(want, tag) {
		err = providers.ErrInvalidSignature
	}
	return v, err
}

func (s *fakeSession) StartMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, _ *frame.Buffer, dst []byte, done func([]byte, int, error)) {
	go func() { done(s.MACVersion(ctx, key, alg, data, nil, dst)) }()
}

func (s *fakeSession) StartVerifyMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, _ *frame.Buffer, tag []byte, done func(int, error)) {
	go func() { done(s.VerifyMACVersion(ctx, key, alg, data, nil, tag)) }()
}

func (s *fakeSession) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.contexts)
}

func sum(data []byte) []byte {
	h := hmac.New(sha256.New, testSecret)
	h.Write(data)
	return h.Sum(nil)
}
