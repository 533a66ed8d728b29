package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// TestKillDuringImportsLeavesNoKeyBytes SIGKILLs a real agent while a
// client imports keys as fast as it can, a dozen times over one
// keystore, and checks after each kill that every file in the keystore
// is a whole key file of a key that was sent, and that no other file
// holds any key's bytes or their base64. The agent must start again on
// what is left each time.
func TestKillDuringImportsLeavesNoKeyBytes(t *testing.T) {
	dir := agenttest.SocketDir(t)
	keys := filepath.Join(dir, "keys")
	conf := filepath.Join(dir, "agent.toml")
	writeFile(t, conf, softwareConfig(keys), 0o600)
	// secretOf makes each name's key distinct and known to the test.
	secretOf := func(name string) []byte {
		s := sha256.Sum256([]byte("crash test " + name))
		return s[:]
	}
	var sent []string          // every name an import was sent for
	acked := map[string]bool{} // and those the agent acknowledged
	const rounds = 12
	imported, leftovers := 0, 0
	for round := range rounds {
		sock := filepath.Join(dir, "agent.sock")
		agent := startAgent(t, nil, "--config", conf, "--socket", sock)
		ctx := context.Background()
		c, err := agent.dial(sock)
		if err != nil {
			t.Fatalf("round %d: the agent did not start on what the last kill left: %v", round, err)
		}
		// Importers run until the kill breaks their connection.
		var mu sync.Mutex
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					name := fmt.Sprintf("r%d-g%d-k%d", round, g, i)
					mu.Lock()
					sent = append(sent, name)
					mu.Unlock()
					if _, err := c.ImportKey(ctx, "soft", name, secretOf(name)); err != nil {
						return
					}
					mu.Lock()
					imported++
					acked[name] = true
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Duration(5+rand.IntN(40)) * time.Millisecond)
		agent.stop(syscall.SIGKILL)
		wg.Wait()
		c.Close()
		os.Remove(sock)

		entries, err := os.ReadDir(keys)
		if err != nil {
			t.Fatal(err)
		}
		for name := range acked {
			if _, err := os.Stat(filepath.Join(keys, name+".key")); err != nil {
				t.Errorf("round %d: the acknowledged import of %s is lost: %v", round, name, err)
			}
		}
		for _, e := range entries {
			path := filepath.Join(keys, e.Name())
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			name, whole := strings.CutSuffix(e.Name(), ".key")
			if whole && !strings.HasPrefix(e.Name(), ".") {
				secret := base64.StdEncoding.EncodeToString(secretOf(name))
				if !bytes.HasSuffix(bytes.TrimSpace(data), []byte(`"secret":"`+secret+`"}`)) {
					t.Errorf("round %d: %s is not a whole key file: %q", round, e.Name(), data)
				}
				continue
			}
			leftovers++
			for _, n := range sent {
				s := secretOf(n)
				if bytes.Contains(data, s) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString(s))) {
					t.Errorf("round %d: %s holds the key %s", round, e.Name(), n)
				}
			}
			t.Errorf("round %d: %s is left in the keystore (%d bytes)", round, e.Name(), len(data))
		}
	}
	t.Logf("%d kills during imports: %d imports acknowledged of %d sent; %d files other than whole key files left", rounds, imported, len(sent), leftovers)
}
