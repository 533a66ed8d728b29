//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// TestDeletedKeyLeavesListing: pkcs11-tool, another process, deletes a
// key the agent has configured and used. The first MAC that finds it gone
// fails with ErrKeyNotFound, and the listing right after no longer shows
// it.
func TestDeletedKeyLeavesListing(t *testing.T) {
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatalf("pkcs11-tool (Debian package opensc) is needed: %v", err)
	}
	pkcs11.SetStaleAfter(t, 20*time.Millisecond)
	p, tok := newToken(t, nil)
	ctx := context.Background()
	for _, k := range []string{"doomed", "kept"} {
		if _, err := p.ImportKey(ctx, k, []byte("secret of "+k)); err != nil {
			t.Fatal(err)
		}
	}
	me := agent.Policy{UIDs: []uint32{uint32(os.Getuid())}, Ops: agent.OpMAC | agent.OpVerify}
	a := agenttest.Start(t, agenttest.Options{
		Providers: []providers.Provider{p},
		Keys:      []agent.KeyConfig{{Name: "doomed", Provider: "hsm", Policy: me}, {Name: "kept", Provider: "hsm", Policy: me}},
	})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	names := func() []string {
		keys, err := c.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range keys {
			out = append(out, k.Name)
		}
		return out
	}
	for _, k := range []string{"doomed", "kept"} {
		if _, err := c.MAC(ctx, k, client.SHA256, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if got := names(); !slices.Contains(got, "doomed") {
		t.Fatalf("listing before: %v", got)
	}
	out, err := exec.Command("pkcs11-tool", "--module", softhsm.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN,
		"--delete-object", "--type", "secrkey", "--label", "doomed").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v: %s", err, out)
	}
	time.Sleep(40 * time.Millisecond) // past the session copy's unchecked use
	if _, err := c.MAC(ctx, "doomed", client.SHA256, []byte("x")); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("MAC with the deleted key: %v, want ErrKeyNotFound", err)
	}
	if got := names(); slices.Contains(got, "doomed") || !slices.Contains(got, "kept") {
		t.Errorf("listing right after a MAC found the key gone: %v, want kept without doomed", got)
	}
}
