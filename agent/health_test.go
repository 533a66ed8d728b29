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
	dir := filepath.Join(t.TempDir(), "keys")
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

// TestCloseWaitsForProbes: once Close returns, no health probe the agent
// started still runs: a software keystore's probe creates the directory
// if it is missing, and one left running made it again after its owner
// removed it, leaving directories behind.
func TestCloseWaitsForProbes(t *testing.T) {
	var remade int
	const runs = 200
	for i := range runs {
		root, err := os.MkdirTemp("", "probes")
		if err != nil {
			t.Fatal(err)
		}
		soft, err := software.Open("soft", filepath.Join(root, "keys"))
		if err != nil {
			t.Fatal(err)
		}
		// Probes back to back: Close comes in the middle of one.
		a, err := agent.New(agent.Options{Providers: []providers.Provider{soft}, HealthInterval: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%4) * 100 * time.Microsecond)
		a.Close()
		err = os.RemoveAll(root) // fails if a probe makes a directory meanwhile
		// Time for a probe left running to finish.
		time.Sleep(2 * time.Millisecond)
		if _, statErr := os.Stat(root); err != nil || statErr == nil {
			remade++
			time.Sleep(10 * time.Millisecond)
			os.RemoveAll(root)
		}
	}
	if remade > 0 {
		t.Errorf("in %d of %d runs a probe made the keystore directory again after Close", remade, runs)
	}
}
