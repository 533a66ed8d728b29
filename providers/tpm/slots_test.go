package tpm_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
)

// TestCreateAfterUseAtThreeSlots: on a fresh swtpm with its three slots,
// ten keys are generated and imported, alternately, through an agent,
// between MACs with the keys made before and with streaming contexts left
// open, each holding a sequence. TPM2_Create and TPM2_Import need a free
// slot of their own, which the provider makes.
func TestCreateAfterUseAtThreeSlots(t *testing.T) {
	p, _, _ := newTPM(t) // slots = 3, the default
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	secrets := map[string][]byte{}
	var streams []*client.HMAC
	var streamed [][]byte // each stream's key's secret, nil for generated keys
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("k%d", i)
		if i%2 == 0 {
			if _, err := c.GenerateKey(ctx, "tpm", name, 0); err != nil {
				t.Fatalf("generate %s after %d keys were used: %v", name, i, err)
			}
		} else {
			secrets[name] = []byte("secret of " + name)
			if _, err := c.ImportKey(ctx, "tpm", name, secrets[name]); err != nil {
				t.Fatalf("import %s after %d keys were used: %v", name, i, err)
			}
		}
		names = append(names, name)
		// Use every key so far, so each is loaded in turn.
		for _, n := range names {
			msg := []byte("use " + n)
			tag, err := c.MAC(ctx, n, client.SHA256, msg)
			if err != nil {
				t.Fatalf("MAC with %s: %v", n, err)
			}
			if s := secrets[n]; s != nil && !bytes.Equal(tag, reference(providers.SHA256, s, msg)) {
				t.Fatalf("MAC with %s: wrong tag", n)
			}
		}
		// A stream that holds a sequence in the TPM, left open.
		h, err := c.New(ctx, name, client.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		h.Update(make([]byte, 3000))
		if _, err := h.Copy(ctx); err != nil { // a round trip: the sequence exists
			t.Fatalf("stream on %s: %v", name, err)
		}
		streams = append(streams, h)
		streamed = append(streamed, secrets[name])
	}
	for i, h := range streams {
		tag, err := h.Finalize(ctx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if s := streamed[i]; s != nil && !bytes.Equal(tag, reference(providers.SHA256, s, make([]byte, 3000))) {
			t.Errorf("stream %d: wrong tag", i)
		}
	}
}
