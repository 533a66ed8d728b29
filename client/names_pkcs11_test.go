//go:build cgo

package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// openToken makes a SoftHSM2 token and opens a provider "hsm" on it.
func openToken(t *testing.T, label string) *pkcs11.Provider {
	t.Helper()
	tok := softhsm.Require(t, label)
	p, err := pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfiguredObjectOnlyThroughItsEntry configures a key that is
// verify-only for the caller, by the token object's CKA_ID and in the
// keystore by the object's name, and checks that the caller cannot get a
// tag from the same object under the name the token or keystore knows it
// by: the name falls under the default policy, which lets the caller MAC.
func TestConfiguredObjectOnlyThroughItsEntry(t *testing.T) {
	ctx := context.Background()
	hsm := openToken(t, "aliases")
	me := uint32(os.Geteuid())
	verifyOnly := agent.Policy{UIDs: []uint32{me}, Ops: agent.OpVerify}
	a := agenttest.Start(t, agenttest.Options{
		Providers: []providers.Provider{hsm},
		Keys: []agent.KeyConfig{
			{Name: "webhook", Provider: "hsm", Ref: "pkcs11:id=webhook-2026", Policy: verifyOnly},
			{Name: "billing", Provider: "hsm", Ref: "billing-2026", Policy: verifyOnly},
			{Name: "local", Provider: "soft", Ref: "local-2026", Policy: verifyOnly},
		},
	})
	for _, name := range []string{"webhook-2026", "billing-2026", "unclaimed"} {
		if _, err := hsm.ImportKey(ctx, name, []byte("token secret "+name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Soft.ImportKey(ctx, "local-2026", []byte("keystore secret")); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range []string{"webhook", "billing", "local"} {
		if _, err := c.MAC(ctx, name, client.SHA256, []byte("m")); !errors.Is(err, client.ErrPermissionDenied) {
			t.Errorf("MAC with the verify-only %s: %v", name, err)
		}
	}
	for _, alias := range []string{"webhook-2026", "billing-2026", "local-2026"} {
		if tag, err := c.MAC(ctx, alias, client.SHA256, []byte("m")); !errors.Is(err, client.ErrKeyNotFound) {
			t.Errorf("MAC with %s, the object of a verify-only entry, by its own name: tag %x, %v; want key_not_found", alias, tag, err)
		}
		if _, err := c.New(ctx, alias, client.SHA256); !errors.Is(err, client.ErrKeyNotFound) {
			t.Errorf("open %s by its own name: %v; want key_not_found", alias, err)
		}
	}
	if _, err := c.MAC(ctx, "unclaimed", client.SHA256, []byte("m")); err != nil {
		t.Errorf("a token key no entry names is still reachable by its name: %v", err)
	}
	infos, err := c.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		switch info.Name {
		case "webhook-2026", "billing-2026", "local-2026":
			t.Errorf("list shows %s, reachable only as its entry", info.Name)
		}
	}
}

// countingProvider counts the lookups that reach a provider.
type countingProvider struct {
	providers.Provider
	mu      sync.Mutex
	lookups map[string]int
}

func (p *countingProvider) Key(ctx context.Context, name string) (providers.Key, error) {
	p.mu.Lock()
	p.lookups[name]++
	p.mu.Unlock()
	return p.Provider.Key(ctx, name)
}

func (p *countingProvider) GenerateKey(ctx context.Context, name string, length int) (providers.KeyInfo, error) {
	return p.Provider.(providers.Generator).GenerateKey(ctx, name, length)
}

// TestUnknownNameFloodReachesTokenOnce sends one-shots and opens for many
// unknown names, several times each, as a caller guessing names would,
// and counts the lookups that reach the PKCS#11 token: at most one per
// name while the names are remembered. A key made through the agent is
// usable at once, and a reload forgets the unknown names.
func TestUnknownNameFloodReachesTokenOnce(t *testing.T) {
	ctx := context.Background()
	hsm := &countingProvider{Provider: openToken(t, "flood"), lookups: map[string]int{}}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{hsm}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const names, rounds = 500, 5
	for round := range rounds {
		for i := range names {
			name := fmt.Sprintf("guess-%d", i)
			var err error
			if round%2 == 0 {
				_, err = c.MAC(ctx, name, client.SHA256, []byte("m"))
			} else {
				_, err = c.New(ctx, name, client.SHA256)
			}
			if !errors.Is(err, client.ErrKeyNotFound) {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	hsm.mu.Lock()
	total := 0
	for name, n := range hsm.lookups {
		total += n
		if n > 1 {
			t.Errorf("%s reached the token %d times", name, n)
		}
	}
	hsm.mu.Unlock()
	t.Logf("%d requests for %d unknown names reached the token %d times", names*rounds, names, total)

	// A key generated through the agent is found at once.
	if _, err := c.MAC(ctx, "made-later", client.SHA256, nil); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatal(err)
	}
	if _, err := c.GenerateKey(ctx, "hsm", "made-later", 32); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MAC(ctx, "made-later", client.SHA256, nil); err != nil {
		t.Errorf("a key generated through the agent after its name was looked up: %v", err)
	}
	// A key made behind the agent's back is found after a reload.
	if _, err := c.MAC(ctx, "made-outside", client.SHA256, nil); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatal(err)
	}
	if _, err := hsm.Provider.(*pkcs11.Provider).GenerateKey(ctx, "made-outside", 32); err != nil {
		t.Fatal(err)
	}
	if err := a.Agent.Reload(nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MAC(ctx, "made-outside", client.SHA256, nil); err != nil {
		t.Errorf("a key made outside the agent, after a reload: %v", err)
	}
}
