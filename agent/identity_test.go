package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// The server reads as much of a peer's identity as the configuration
// needs, and a reload changes what that is.
func TestIdentityNeedFollowsConfiguration(t *testing.T) {
	a, _ := newAgent(t)
	if n := a.IdentityNeed(); n != agent.NeedNone {
		t.Errorf("owner policy, no audit: need %v", n)
	}
	units := agent.KeyConfig{Name: "k", Provider: "soft", Policy: agent.Policy{Units: []string{"webhook.service"}, Ops: agent.OpMAC}}
	if err := a.Reload([]agent.KeyConfig{units}, nil); err != nil {
		t.Fatal(err)
	}
	if n := a.IdentityNeed(); n != agent.NeedIdentity {
		t.Errorf("a unit condition: need %v", n)
	}
	digest := agent.Policy{UIDs: []uint32{0}, Ops: agent.OpMAC, Alternatives: []agent.Policy{{Executables: []agent.Executable{{Path: "/x", SHA256: make([]byte, 32)}}, Ops: agent.OpMAC}}}
	if err := a.Reload(nil, &digest); err != nil {
		t.Fatal(err)
	}
	if n := a.IdentityNeed(); n != agent.NeedDigest {
		t.Errorf("a digest in the default policy: need %v", n)
	}
	if err := a.Reload(nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := a.IdentityNeed(); n != agent.NeedNone {
		t.Errorf("back to the owner policy: need %v", n)
	}

	// The audit log names each caller's unit and binary, so it needs them.
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	audited, err := agent.New(agent.Options{Providers: []providers.Provider{soft}, Audit: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer audited.Close()
	if n := audited.IdentityNeed(); n != agent.NeedIdentity {
		t.Errorf("audit on: need %v", n)
	}
}

// A session judges its peer by the identity it was given at connect; a
// peer whose identity was not read is denied by unit conditions but not
// by uid-only ones.
func TestSessionJudgesIdentity(t *testing.T) {
	a, soft := newAgent(t,
		agent.KeyConfig{Name: "by-unit", Provider: "soft", Policy: agent.Policy{Units: []string{"webhook.service"}, Ops: agent.OpMAC}},
		agent.KeyConfig{Name: "by-uid", Provider: "soft", Policy: agent.Policy{UIDs: []uint32{33}, Ops: agent.OpMAC}},
	)
	ctx := context.Background()
	for _, k := range []string{"by-unit", "by-uid"} {
		if _, err := soft.ImportKey(ctx, k, []byte("identity-session-key-0123456789ab")); err != nil {
			t.Fatal(err)
		}
	}
	webhook := &agent.Identity{Unit: "webhook.service", Cgroup: "/system.slice/webhook.service", Executable: "/usr/bin/webhook"}
	for _, tt := range []struct {
		name string
		peer agent.Peer
		key  string
		want error
	}{
		{"unit", agent.Peer{UID: 33, Known: true, Identity: webhook}, "by-unit", nil},
		{"unit unread", agent.Peer{UID: 33, Known: true}, "by-unit", providers.ErrPermissionDenied},
		{"other unit", agent.Peer{UID: 33, Known: true, Identity: &agent.Identity{Unit: "api.service"}}, "by-unit", providers.ErrPermissionDenied},
		{"uid, identity unread", agent.Peer{UID: 33, Known: true}, "by-uid", nil},
	} {
		s := a.NewSession(tt.peer)
		_, err := s.MAC(ctx, []byte(tt.key), providers.SHA256, []byte("m"), nil)
		s.Close()
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}
