package pkcs11

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPINFileMustBePrivate: a PIN file another user can read is refused,
// and a private one is read without its newline.
func TestPINFileMustBePrivate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, []byte("1234\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSecretFile(p); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Errorf("loose pin file: %v", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := readSecretFile(p); err != nil || string(b) != "1234" {
		t.Errorf("pin file: %q, %v", b, err)
	}
}
