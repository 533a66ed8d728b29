package client_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"os"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// TestKeyDeletedAndMadeAgainServes deletes a key in use and imports a new
// one under the same name at once, as an operator's script replacing a
// key does, by its own name and through a configured name for it, and
// checks the next MAC is the new key's. The software keystore records a
// key's creation to the second, so the new key's version 1 looked like
// the deleted one's: the agent reused the deleted version's handle, and
// the name failed as "not found" from then on, until a restart.
func TestKeyDeletedAndMadeAgainServes(t *testing.T) {
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{Keys: []agent.KeyConfig{
		{Name: "alias", Provider: "soft", Ref: "aliased", Policy: agent.OwnerPolicy(uint32(os.Geteuid()))},
	}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("payload")
	for _, tc := range []struct{ name, object string }{{"remade", "remade"}, {"alias", "aliased"}} {
		for round := range 3 {
			secret := fmt.Appendf(nil, "secret %s %d", tc.name, round)
			if round > 0 {
				if err := c.DeleteKey(ctx, "", tc.name); err != nil {
					t.Fatalf("%s round %d: delete: %v", tc.name, round, err)
				}
			}
			if _, err := c.ImportKey(ctx, "soft", tc.object, secret); err != nil {
				t.Fatalf("%s round %d: import: %v", tc.name, round, err)
			}
			got, err := c.MAC(ctx, tc.name, client.SHA256, msg)
			if err != nil {
				t.Fatalf("%s round %d: MAC with the key made again: %v", tc.name, round, err)
			}
			h := hmac.New(sha256.New, secret)
			h.Write(msg)
			if want := h.Sum(nil); !bytes.Equal(got, want) {
				t.Fatalf("%s round %d: MAC %x, want the new key's %x", tc.name, round, got, want)
			}
		}
	}
	// A failed import of the object's name is a make that made nothing;
	// the configured name for the object still sees the rotation after
	// it.
	if _, err := c.ImportKey(ctx, "soft", "aliased", []byte("again")); err == nil {
		t.Fatal("importing over an existing key succeeded")
	}
	if _, err := c.RotateKey(ctx, "", "alias", nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, v, err := c.MACVersion(ctx, "alias", client.SHA256, msg); err != nil || v != 2 {
		t.Errorf("MAC after rotating: version %d, %v; want version 2", v, err)
	}
}
