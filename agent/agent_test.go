package agent_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

func newAgent(t *testing.T, keys ...agent.KeyConfig) (*agent.Agent, *software.Provider) {
	t.Helper()
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{soft}, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, soft
}

var owner = agent.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: 1, Known: true}

// sessionMAC drives a context of a Session as a providers.MAC.
type sessionMAC struct {
	s   *agent.Session
	id  uint32
	alg providers.Algorithm
	// done mirrors the client: a finished context is the client's to
	// report, since the agent frees its ID.
	done bool
}

func (m *sessionMAC) Algorithm() providers.Algorithm { return m.alg }
func (m *sessionMAC) Update(ctx context.Context, p []byte) error {
	if m.done {
		return providers.ErrAlreadyFinalized
	}
	return m.s.Update(ctx, m.id, p, nil)
}
func (m *sessionMAC) Copy(ctx context.Context) (providers.MAC, error) {
	if m.done {
		return nil, providers.ErrAlreadyFinalized
	}
	id := nextID.Add(1)
	if err := m.s.Copy(ctx, m.id, id); err != nil {
		return nil, err
	}
	return &sessionMAC{s: m.s, id: id, alg: m.alg}, nil
}
func (m *sessionMAC) Finalize(ctx context.Context) ([]byte, error) {
	if m.done {
		return nil, providers.ErrAlreadyFinalized
	}
	m.done = true
	return m.s.Finalize(ctx, m.id, nil)
}
func (m *sessionMAC) Verify(ctx context.Context, tag []byte) error {
	if m.done {
		return providers.ErrAlreadyFinalized
	}
	m.done = true
	return m.s.Verify(ctx, m.id, tag)
}
func (m *sessionMAC) Close() {
	if !m.done {
		m.done = true
		m.s.Abandon(m.id)
	}
}

var nextID atomic.Uint32

func TestConformanceThroughSession(t *testing.T) {
	a, soft := newAgent(t)
	s := a.NewSession(owner)
	defer s.Close()
	providertest.Run(t, providertest.Subject{
		Open: func(ctx context.Context, key string, alg providers.Algorithm) (providers.MAC, error) {
			id := nextID.Add(1)
			if err := s.Open(ctx, id, []byte(key), alg); err != nil {
				return nil, err
			}
			return &sessionMAC{s: s, id: id, alg: alg}, nil
		},
		Import: func(ctx context.Context, name string, secret []byte) error {
			_, err := soft.ImportKey(ctx, name, secret)
			return err
		},
		MAC: func(ctx context.Context, key string, alg providers.Algorithm, data []byte) ([]byte, error) {
			return s.MAC(ctx, []byte(key), alg, data, nil)
		},
		VerifyMAC: func(ctx context.Context, key string, alg providers.Algorithm, data, tag []byte) error {
			return s.VerifyMAC(ctx, []byte(key), alg, data, tag)
		},
		Algorithms: providers.Algorithms(),
	})
	if n := s.Contexts(); n != 0 {
		t.Errorf("%d contexts left open", n)
	}
}

func TestPolicy(t *testing.T) {
	ctx := context.Background()
	stranger := agent.Peer{UID: 4242, GID: 4242, PID: 2, Known: true}
	verifier := agent.Peer{UID: 5000, GID: 100, PID: 3, Known: true}
	a, soft := newAgent(t,
		agent.KeyConfig{Name: "shared", Provider: "soft", Ref: "shared-v1",
			Policy: agent.Policy{UIDs: []uint32{owner.UID}, GIDs: []uint32{100}, Ops: agent.OpVerify}},
	)
	soft.ImportKey(ctx, "private", []byte("private"))
	soft.ImportKey(ctx, "shared-v1", []byte("shared"))
	tag, err := a.NewSession(owner).MAC(ctx, []byte("private"), providers.SHA256, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sharedTag, _ := providertestTag([]byte("shared"), nil)

	for _, tc := range []struct {
		name string
		peer agent.Peer
		do   func(s *agent.Session) error
		want error
	}{
		{"owner may MAC its key", owner, func(s *agent.Session) error {
			_, err := s.MAC(ctx, []byte("private"), providers.SHA256, nil, nil)
			return err
		}, nil},
		{"stranger may not MAC", stranger, func(s *agent.Session) error {
			_, err := s.MAC(ctx, []byte("private"), providers.SHA256, nil, nil)
			return err
		}, providers.ErrPermissionDenied},
		{"stranger may not verify", stranger, func(s *agent.Session) error { return s.VerifyMAC(ctx, []byte("private"), providers.SHA256, nil, tag) }, providers.ErrPermissionDenied},
		{"stranger may not open", stranger, func(s *agent.Session) error { return s.Open(ctx, 1, []byte("private"), providers.SHA256) }, providers.ErrPermissionDenied},
		{"unknown peer gets nothing", agent.Peer{}, func(s *agent.Session) error {
			_, err := s.MAC(ctx, []byte("private"), providers.SHA256, nil, nil)
			return err
		}, providers.ErrPermissionDenied},
		{"group member may verify", verifier, func(s *agent.Session) error {
			return s.VerifyMAC(ctx, []byte("shared"), providers.SHA256, nil, sharedTag)
		}, nil},
		{"verify-only may not MAC", verifier, func(s *agent.Session) error {
			_, err := s.MAC(ctx, []byte("shared"), providers.SHA256, nil, nil)
			return err
		}, providers.ErrPermissionDenied},
		{"verify-only may open and verify", verifier, func(s *agent.Session) error {
			if err := s.Open(ctx, 1, []byte("shared"), providers.SHA256); err != nil {
				return err
			}
			return s.Verify(ctx, 1, sharedTag)
		}, nil},
		{"verify-only may not finalize", verifier, func(s *agent.Session) error {
			if err := s.Open(ctx, 1, []byte("shared"), providers.SHA256); err != nil {
				return err
			}
			_, err := s.Finalize(ctx, 1, nil)
			return err
		}, providers.ErrPermissionDenied},
		{"a configured key's object is not reachable by its own name", owner, func(s *agent.Session) error {
			_, err := s.MAC(ctx, []byte("shared-v1"), providers.SHA256, nil, nil)
			return err
		}, providers.ErrKeyNotFound},
		{"nor by a verify-only caller", verifier, func(s *agent.Session) error {
			_, err := s.MAC(ctx, []byte("shared-v1"), providers.SHA256, nil, nil)
			return err
		}, providers.ErrPermissionDenied},
	} {
		s := a.NewSession(tc.peer)
		err := tc.do(s)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if s.Contexts() != 0 {
			t.Errorf("%s: contexts left open", tc.name)
		}
		s.Close()
	}
}

func TestManagementIsForOwnerAndRoot(t *testing.T) {
	ctx := context.Background()
	a, _ := newAgent(t)
	stranger := agent.Peer{UID: 4242, GID: 4242, Known: true}
	if _, err := a.GenerateKey(ctx, stranger, "", "k", 0); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("stranger generate: %v", err)
	}
	if _, err := a.ImportKey(ctx, stranger, "", "k", []byte("x")); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("stranger import: %v", err)
	}
	if _, err := a.GenerateKey(ctx, owner, "", "k", 0); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteKey(ctx, stranger, "", "k"); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("stranger delete: %v", err)
	}
	if keys, _ := a.ListKeys(ctx, stranger); len(keys) != 0 {
		t.Errorf("stranger lists %d keys it may not use", len(keys))
	}
	root := agent.Peer{UID: 0, Known: true}
	if keys, _ := a.ListKeys(ctx, root); len(keys) != 1 {
		t.Errorf("root lists %d keys", len(keys))
	}
	if err := a.DeleteKey(ctx, root, "", "k"); err != nil {
		t.Errorf("root delete: %v", err)
	}
	// A deleted key is gone from the cache too.
	if _, err := a.NewSession(owner).MAC(ctx, []byte("k"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("MAC after delete: %v", err)
	}
}

func TestTotalContextLimit(t *testing.T) {
	ctx := context.Background()
	soft, _ := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	a, _ := agent.New(agent.Options{Providers: []providers.Provider{soft}, Limits: agent.Limits{MaxContexts: 5}})
	defer a.Close()
	soft.ImportKey(ctx, "k", []byte("k"))
	s1, s2 := a.NewSession(owner), a.NewSession(owner)
	for i := range uint32(3) {
		if err := s1.Open(ctx, i, []byte("k"), providers.SHA1); err != nil {
			t.Fatal(err)
		}
	}
	for i := range uint32(2) {
		if err := s2.Open(ctx, i, []byte("k"), providers.SHA1); err != nil {
			t.Fatal(err)
		}
	}
	if err := s2.Open(ctx, 9, []byte("k"), providers.SHA1); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("sixth context: %v, want ErrLimit", err)
	}
	s1.Close()
	if err := s2.Open(ctx, 9, []byte("k"), providers.SHA1); err != nil {
		t.Errorf("after a session closed: %v", err)
	}
	if st := a.Status(ctx); st.Contexts != 3 || st.Connections != 1 {
		t.Errorf("status %+v", st)
	}
}

func TestIdleContextsExpire(t *testing.T) {
	ctx := context.Background()
	soft, _ := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	a, _ := agent.New(agent.Options{Providers: []providers.Provider{soft}, Limits: agent.Limits{IdleContextTimeout: time.Second}})
	defer a.Close()
	soft.ImportKey(ctx, "k", []byte("k"))
	s := a.NewSession(owner)
	defer s.Close()
	s.Open(ctx, 1, []byte("k"), providers.SHA256)
	s.Open(ctx, 2, []byte("k"), providers.SHA256)
	deadline := time.Now().Add(10 * time.Second)
	for s.Contexts() > 1 && time.Now().Before(deadline) {
		s.Update(ctx, 2, []byte("kept busy"), nil) // context 2 stays in use
		time.Sleep(100 * time.Millisecond)
	}
	if s.Contexts() != 1 {
		t.Fatalf("%d contexts open after the idle timeout", s.Contexts())
	}
	_, err := s.Finalize(ctx, 1, nil)
	if !errors.Is(err, providers.ErrLimit) || !strings.Contains(err.Error(), "was idle for more than 1s") {
		t.Errorf("an expired context: %v", err)
	}
	if _, err := s.Finalize(ctx, 1, nil); !errors.Is(err, providers.ErrUnknownContext) {
		t.Errorf("after the expiry was reported: %v", err)
	}
	if _, err := s.Finalize(ctx, 2, nil); err != nil {
		t.Errorf("the context in use: %v", err)
	}
	if st := a.Status(ctx); st.Contexts != 0 {
		t.Errorf("%d contexts counted", st.Contexts)
	}
}

func TestReload(t *testing.T) {
	ctx := context.Background()
	a, soft := newAgent(t,
		agent.KeyConfig{Name: "webhook", Provider: "soft", Ref: "webhook-v1", Policy: agent.OwnerPolicy(owner.UID)},
		agent.KeyConfig{Name: "billing", Provider: "soft", Policy: agent.OwnerPolicy(owner.UID)},
		agent.KeyConfig{Name: "gone", Provider: "soft", Ref: "gone-object", Policy: agent.OwnerPolicy(owner.UID)},
	)
	// (A keystore key is reachable by its own name, so the configured
	// name "gone" points at an object of another name.)
	for _, k := range []string{"webhook-v1", "webhook-v2", "billing", "gone-object"} {
		soft.ImportKey(ctx, k, []byte(k))
	}
	s := a.NewSession(owner)
	defer s.Close()
	for id, key := range map[uint32]string{1: "webhook", 2: "billing", 3: "gone"} {
		if err := s.Open(ctx, id, []byte(key), providers.SHA256); err != nil {
			t.Fatal(err)
		}
		s.Update(ctx, id, []byte("before"), nil)
	}
	// webhook now names another key, billing becomes verify-only, gone
	// is gone, and fresh appears.
	err := a.Reload([]agent.KeyConfig{
		{Name: "webhook", Provider: "soft", Ref: "webhook-v2", Policy: agent.OwnerPolicy(owner.UID)},
		{Name: "billing", Provider: "soft", Policy: agent.Policy{UIDs: []uint32{owner.UID}, Ops: agent.OpVerify}},
		{Name: "fresh", Provider: "soft", Ref: "billing", Policy: agent.OwnerPolicy(owner.UID)},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finalize(ctx, 1, nil); !errors.Is(err, providers.ErrPermissionDenied) || !strings.Contains(err.Error(), "now names another key") {
		t.Errorf("context on a re-pointed key: %v", err)
	}
	if _, err := s.Finalize(ctx, 2, nil); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("context on a key become verify-only: %v", err)
	}
	if _, err := s.Finalize(ctx, 3, nil); !errors.Is(err, providers.ErrPermissionDenied) || !strings.Contains(err.Error(), "was removed") {
		t.Errorf("context on a removed key: %v", err)
	}
	if _, err := s.MAC(ctx, []byte("fresh"), providers.SHA256, nil, nil); err != nil {
		t.Errorf("a key added by the reload: %v", err)
	}
	if tag, _ := s.MAC(ctx, []byte("webhook"), providers.SHA256, []byte("m"), nil); !bytes.Equal(tag, tagOf([]byte("webhook-v2"), []byte("m"))) {
		t.Error("webhook does not use its new key")
	}
	if err := a.Reload([]agent.KeyConfig{{Name: "x", Provider: "nowhere"}}, nil); err == nil {
		t.Error("a reload naming a missing provider was accepted")
	}
	if _, err := s.MAC(ctx, []byte("fresh"), providers.SHA256, nil, nil); err != nil {
		t.Errorf("after a rejected reload the old configuration stays: %v", err)
	}
}

func tagOf(key, msg []byte) []byte {
	t, _ := providertestTag(key, msg)
	return t
}
