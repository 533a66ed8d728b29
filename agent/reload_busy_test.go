package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
)

// TestReloadRevokesBusyContext: a reload passes over a context a request
// is using; when that request ends, the context is checked again and,
// revoked, ends at once, freeing its device state, rather than at its
// next request or the idle timeout. That next request is told why.
func TestReloadRevokesBusyContext(t *testing.T) {
	ctx := context.Background()
	lax := &laxProvider{entered: make(chan struct{}), resume: make(chan struct{})}
	key := agent.KeyConfig{Name: "lax-key", Provider: "lax", Policy: agent.OwnerPolicy(owner.UID)}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{lax}, Keys: []agent.KeyConfig{key}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s := a.NewSession(owner)
	defer s.Close()
	for id := uint32(1); id <= 2; id++ {
		if err := s.Open(ctx, id, []byte("lax-key"), providers.SHA256); err != nil {
			t.Fatal(err)
		}
	}
	updated := make(chan error, 1)
	go func() { updated <- s.Update(ctx, 1, []byte("m"), nil) }()
	<-lax.entered // context 1 is busy in the device

	key.Policy.Ops = agent.OpVerify // the owner may no longer MAC
	if err := a.Reload([]agent.KeyConfig{key}, nil); err != nil {
		t.Fatal(err)
	}
	if n, open := s.Contexts(), lax.open.Load(); n != 1 || open != 1 {
		t.Fatalf("after the reload: %d contexts, %d holding device state; want the busy one alone", n, open)
	}
	close(lax.resume)
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
	if n, open := s.Contexts(), lax.open.Load(); n != 0 || open != 0 {
		t.Fatalf("once its request ended, the revoked context is still open (%d contexts, %d holding device state)", n, open)
	}
	if _, err := s.Finalize(ctx, 1, nil); !errors.Is(err, providers.ErrPermissionDenied) || !strings.Contains(err.Error(), "may no longer") {
		t.Fatalf("the revoked context's next request: %v", err)
	}
}
