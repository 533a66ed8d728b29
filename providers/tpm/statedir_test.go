package tpm_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// TestStaleTempFilesRemovedAtOpen: blobs a crash left in temporary files
// (today's names: .ALG.json.tmp-N beside a key's blobs) are removed when
// the provider opens, and the key whose blobs were complete still works.
func TestStaleTempFilesRemovedAtOpen(t *testing.T) {
	p, sw, state := newTPM(t)
	ctx := context.Background()
	if _, err := p.GenerateKey(ctx, "kept", 0); err != nil {
		t.Fatal(err)
	}
	p.Close()
	stale := []string{
		filepath.Join(state, "keys", "kept", ".sha256.json.tmp-123456"),
		filepath.Join(state, "keys", ".half.tmp-1"),
	}
	for _, f := range stale {
		if err := os.WriteFile(f, []byte(`{"version":1,"auth":"c2VjcmV0"}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p = open(t, sw, state)
	for _, f := range stale {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s survived Open: %v", f, err)
		}
	}
	if _, err := p.Key(ctx, "kept"); err != nil {
		t.Errorf("the complete key: %v", err)
	}
}

// TestStateDirLinkRefused: a state directory, or its keys directory, that
// is a symbolic link is refused before the TPM is reached.
func TestStateDirLinkRefused(t *testing.T) {
	sw := swtpm.Require(t)
	base := t.TempDir()
	real := filepath.Join(base, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(base, "state")
	os.Symlink(real, link)
	_, err := tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: link})
	if err == nil || !strings.Contains(err.Error(), link+" is a symbolic link") {
		t.Errorf("state directory as a link: %v", err)
	}
	state := filepath.Join(base, "state2")
	os.Mkdir(state, 0o700)
	os.Symlink(real, filepath.Join(state, "keys"))
	_, err = tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: state})
	if err == nil || !strings.Contains(err.Error(), "keys is a symbolic link") {
		t.Errorf("keys directory as a link: %v", err)
	}
}
