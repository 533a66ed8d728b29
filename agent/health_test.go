package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// TestHealthMessageIsTheProviders: a provider that fails its probe is
// reported with the message its own package gives for its kind, and never
// with the device's error text.
func TestHealthMessageIsTheProviders(t *testing.T) {
	// Not t.TempDir: Close does not wait for a probe under way, and a late
	// probe (CheckDir) can make the directory again while the test's
	// cleanup removes it.
	root, err := os.MkdirTemp("", "health")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	dir := filepath.Join(root, "keys")
	soft, err := software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{soft}, HealthInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Another user could now plant keys: the keystore is no longer private.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	var st agent.ProviderStatus
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st = a.Status(context.Background()).Providers[0]; !st.Healthy {
			break
		}
	}
	if st.Healthy {
		t.Fatal("a keystore open to every user still reads healthy")
	}
	if want := soft.HealthMessage(); st.Error != want || want == "unavailable" {
		t.Errorf("status error %q, want the software provider's %q", st.Error, want)
	}
}
