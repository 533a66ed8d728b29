//go:build cgo

package client_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
)

// TestTokenContextDoesNotMoveToAKeyMadeAgain opens a context on a token
// key, deletes the key and imports another under the same name, and
// checks that neither the context nor a copy of it made after the delete
// yields a tag, least of all the new key's: a token tells objects apart
// only by label and ID, so the context's key, looked up again when its
// operation started, found the new object and finished under a key the
// context was never opened with.
func TestTokenContextDoesNotMoveToAKeyMadeAgain(t *testing.T) {
	ctx := context.Background()
	hsm := openToken(t, "remade")
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{hsm}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oldSecret, newSecret := []byte("the first key of this name, 32 bytes"), []byte("the second key of this name, 32 b")
	if _, err := c.ImportKey(ctx, "hsm", "remade", oldSecret); err != nil {
		t.Fatal(err)
	}
	h, err := c.New(ctx, "remade", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	h.Update([]byte("opened under the first key"))
	if err := c.DeleteKey(ctx, "hsm", "remade"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImportKey(ctx, "hsm", "remade", newSecret); err != nil {
		t.Fatal(err)
	}
	underNew := hmac.New(sha256.New, newSecret)
	underNew.Write([]byte("opened under the first key"))
	newTag := underNew.Sum(nil)
	copied, err := h.Copy(ctx)
	if err == nil {
		tag, err := copied.Finalize(ctx)
		if err == nil || bytes.Equal(tag, newTag) {
			t.Errorf("copy made after the delete: tag %x, err %v; want key_not_found (the new key's tag is %x)", tag, err, newTag)
		}
	} else if !errors.Is(err, client.ErrKeyNotFound) {
		t.Errorf("copy after the delete: %v, want key_not_found", err)
	}
	tag, err := h.Finalize(ctx)
	if !errors.Is(err, client.ErrKeyNotFound) {
		t.Errorf("context opened before the delete: tag %x, err %v; want key_not_found (the new key's tag is %x)", tag, err, newTag)
	}
	// The name itself means the new key now.
	got, err := c.MAC(ctx, "remade", client.SHA256, []byte("opened under the first key"))
	if err != nil || !bytes.Equal(got, newTag) {
		t.Errorf("MAC with the new key: %x %v, want %x", got, err, newTag)
	}
}
