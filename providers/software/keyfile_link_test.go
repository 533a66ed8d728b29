package software_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers/software"
)

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
