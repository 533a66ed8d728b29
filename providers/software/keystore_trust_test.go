package software_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers/software"
)

// TestStaleTempFilesRemovedAtOpen: a key file a crash left in its
// temporary file (.NAME.key.tmp-N, holding the whole key) is removed when
// the keystore opens; it is not loaded, and complete keys are.
func TestStaleTempFilesRemovedAtOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	p, err := software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "kept", []byte("kept-secret")); err != nil {
		t.Fatal(err)
	}
	p.Close()
	stale := filepath.Join(dir, ".lost.key.tmp-2930481")
	body := `{"version":1,"created":"2026-11-30T00:00:00Z","secret":"bG9zdC1zZWNyZXQ="}`
	if err := os.WriteFile(stale, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err = software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Errorf("%s survived Open: %v", stale, err)
	}
	if _, err := p.Key(ctx, "kept"); err != nil {
		t.Errorf("the complete key: %v", err)
	}
	if _, err := p.Key(ctx, "lost"); err == nil {
		t.Error("the temporary file was loaded as a key")
	}
}

// TestKeystoreLinkRefused: a keystore directory that is a symbolic link
// is refused, naming it.
func TestKeystoreLinkRefused(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(base, "keys")
	os.Symlink(real, link)
	_, err := software.Open("soft", link)
	if err == nil || !strings.Contains(err.Error(), link+" is a symbolic link") {
		t.Errorf("a linked keystore: %v", err)
	}
}

// TestKeyFileLinkRefused: a key file that is a symbolic link (here to a
// valid key file elsewhere) stops the keystore's load, naming it, rather
// than being followed.
func TestKeyFileLinkRefused(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "keys")
	os.Mkdir(dir, 0o700)
	elsewhere := filepath.Join(base, "elsewhere.key")
	body := `{"version":1,"created":"2026-11-30T00:00:00Z","secret":"c2VjcmV0"}`
	os.WriteFile(elsewhere, []byte(body), 0o600)
	link := filepath.Join(dir, "planted.key")
	os.Symlink(elsewhere, link)
	_, err := software.Open("soft", dir)
	if err == nil || !strings.Contains(err.Error(), link+" is a symbolic link") {
		t.Errorf("a linked key file: %v", err)
	}
}
