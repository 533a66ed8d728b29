package agent_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// countingProvider counts the lookups that reach a provider.
type countingProvider struct {
	providers.Provider
	lookups atomic.Int64
}

func (p *countingProvider) Key(ctx context.Context, name string) (providers.Key, error) {
	p.lookups.Add(1)
	return p.Provider.Key(ctx, name)
}

// TestStrangerNeverCausesLookups: a caller that may use no key of the
// names it sends is denied, the same way for names that exist and names
// that do not, and no provider is asked about any of them, not even by
// the server's questions whether to run a request inline.
func TestStrangerNeverCausesLookups(t *testing.T) {
	ctx := context.Background()
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingProvider{Provider: soft}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{counting}, Keys: []agent.KeyConfig{
		{Name: "configured", Provider: "soft", Policy: agent.OwnerPolicy(owner.UID)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	soft.ImportKey(ctx, "exists", []byte("secret"))
	soft.ImportKey(ctx, "configured", []byte("secret"))
	stranger := a.NewSession(agent.Peer{UID: 4242, GID: 4242, PID: 7, Known: true})
	defer stranger.Close()
	var first string
	for i := range 200 {
		name := []byte(fmt.Sprintf("guess-%d", i))
		switch i {
		case 0:
			name = []byte("exists")
		case 1:
			name = []byte("configured")
		}
		if !stranger.Immediate(name) {
			t.Errorf("%s: a request that is denied at once is not run inline", name)
		}
		_, err := stranger.MAC(ctx, name, providers.SHA256, nil, nil)
		if !errors.Is(err, providers.ErrPermissionDenied) {
			t.Fatalf("%s: %v", name, err)
		}
		if err := stranger.Open(ctx, 1, name, providers.SHA256); !errors.Is(err, providers.ErrPermissionDenied) {
			t.Fatalf("open %s: %v", name, err)
		}
		shape := strings.ReplaceAll(err.Error(), string(name), "NAME")
		if first == "" {
			first = shape
		} else if shape != first {
			t.Errorf("%s: message %q, not %q", name, err, first)
		}
	}
	if n := counting.lookups.Load(); n != 0 {
		t.Errorf("a caller allowed nothing caused %d provider lookups", n)
	}
	// The owner is told which names exist.
	own := a.NewSession(owner)
	defer own.Close()
	if _, err := own.MAC(ctx, []byte("guess-5"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("owner, unknown name: %v", err)
	}
	if _, err := own.MAC(ctx, []byte("exists"), providers.SHA256, nil, nil); err != nil {
		t.Errorf("owner, a key that exists: %v", err)
	}
}

// TestMissingConfiguredKeyFoundOnceMade: a configured key whose object
// is missing is remembered as missing, but importing the object through
// the agent, under the object's own name, makes the key usable at once.
func TestMissingConfiguredKeyFoundOnceMade(t *testing.T) {
	ctx := context.Background()
	a, _ := newAgent(t, agent.KeyConfig{Name: "webhook", Provider: "soft", Ref: "webhook-2026", Policy: agent.OwnerPolicy(owner.UID)})
	s := a.NewSession(owner)
	defer s.Close()
	if _, err := s.MAC(ctx, []byte("webhook"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Fatalf("before the import: %v", err)
	}
	if _, err := a.ImportKey(ctx, owner, "soft", "webhook-2026", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MAC(ctx, []byte("webhook"), providers.SHA256, nil, nil); err != nil {
		t.Errorf("the configured key right after its object was imported: %v", err)
	}
}
