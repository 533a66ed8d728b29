//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// tokenDirOf finds the directory SoftHSM2 keeps the labelled token in.
func tokenDirOf(t *testing.T, label string) string {
	t.Helper()
	entries, err := os.ReadDir(softhsm.TokenDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		dir := filepath.Join(softhsm.TokenDir(), e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "token.object"))
		if err == nil && bytes.Contains(b, []byte(label)) {
			return dir
		}
	}
	t.Fatalf("no token directory holds %q", label)
	return ""
}

// TestNeighbourTokenOutage: two providers on one module, each with its
// own token. While one token stays away, the other keeps serving, and a
// stream on it is not cut by the first one's recovery tries.
func TestNeighbourTokenOutage(t *testing.T) {
	// Both tokens exist before the module is initialized: it sees no
	// token made after.
	goneTok := softhsm.Require(t, fmt.Sprintf("test%d", tokenSeq.Add(1)))
	keptTok := softhsm.Require(t, fmt.Sprintf("test%d", tokenSeq.Add(1)))
	ctx := context.Background()
	openTok := func(name string, tok *softhsm.Token) *pkcs11.Provider {
		p, err := pkcs11.Open(ctx, pkcs11.Config{Name: name, Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN), BufferBytes: 64})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	gone, kept := openTok("gone", goneTok), openTok("kept", keptTok)
	secret := []byte("neighbour key")
	if _, err := kept.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	k, err := kept.Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	m, err := k.NewMAC(ctx, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	msg := bytes.Repeat([]byte("x"), 1000)
	if err := m.Update(ctx, msg); err != nil { // past BufferBytes: a session streams it
		t.Fatal(err)
	}

	dir := tokenDirOf(t, goneTok.Label)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(dir+".away", dir)
	if err := gone.Health(ctx); !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("Health of the provider whose token went: %v", err)
	}
	time.Sleep(4 * time.Second) // several recovery tries
	if err := m.Update(ctx, msg); err != nil {
		t.Fatalf("the other token's stream after 4 s: %v", err)
	}
	tag, err := m.Finalize(ctx)
	if err != nil || !bytes.Equal(tag, reference(providers.SHA256, secret, append(msg, msg...))) {
		t.Fatalf("the other token's stream, cut by the first one's recovery: %x %v", tag, err)
	}
}
