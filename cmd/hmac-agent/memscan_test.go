package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// mapping is one line of /proc/PID/smaps with what the scan needs.
type mapping struct {
	start, end uint64
	readable   bool
	locked     bool // VmFlags lo, or Locked: above 0 kB
	name       string
}

func readMappings(t *testing.T, pid int) []mapping {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var maps []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			lo, hi, _ := strings.Cut(fields[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				m := mapping{start: start, end: end, readable: fields[1][0] == 'r'}
				if len(fields) >= 6 {
					m.name = fields[5]
				}
				maps = append(maps, m)
				continue
			}
		}
		if len(maps) == 0 {
			continue
		}
		m := &maps[len(maps)-1]
		switch {
		case strings.HasPrefix(line, "Locked:") && len(fields) >= 2 && fields[1] != "0":
			m.locked = true
		case strings.HasPrefix(line, "VmFlags:"):
			for _, fl := range fields[1:] {
				if fl == "lo" {
					m.locked = true
				}
			}
		}
	}
	return maps
}

// scanMemory reads every readable mapping of pid that is not a file
// mapping and reports which patterns occur, and whether in locked pages.
func scanMemory(t *testing.T, pid int, patterns map[string][]byte) (outside, inside []string) {
	t.Helper()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, m := range readMappings(t, pid) {
		if !m.readable || m.name == "[vvar]" || m.name == "[vsyscall]" || m.name == "[vvar_vclock]" {
			continue
		}
		buf := make([]byte, m.end-m.start)
		n, _ := mem.ReadAt(buf, int64(m.start))
		buf = buf[:n]
		for name, p := range patterns {
			if bytes.Contains(buf, p) {
				where := fmt.Sprintf("%s at %x-%x %s", name, m.start, m.end, m.name)
				if m.locked {
					inside = append(inside, where)
				} else {
					outside = append(outside, where)
				}
			}
		}
	}
	return outside, inside
}

// TestKeyMaterialOnlyInLockedMemory runs a real agent process, imports
// a key, MACs with it in every algorithm (one-shots, contexts, copies),
// and reads the agent's memory: K, each K⊕ipad and K⊕opad block (for
// every block size) and base64(K) must occur in locked pages only; after
// the key is deleted, nowhere. It must run as root, as CI does: only
// root can read a non-dumpable process's memory.
func TestKeyMaterialOnlyInLockedMemory(t *testing.T) {
	agenttest.RequireRoot(t, "to read the agent's memory")
	dir := agenttest.SocketDir(t)
	sock := filepath.Join(dir, "agent.sock")
	env := []string{"XDG_STATE_HOME=" + filepath.Join(dir, "state"), "XDG_RUNTIME_DIR=" + dir, "HOME=" + dir}
	agent := startAgent(t, env, "--socket", sock)
	c := agent.mustDial(t, sock)
	ctx := context.Background()

	secret := make([]byte, 40)
	rand.Read(secret)
	patterns := keyPatterns("", secret)
	// The key goes in on a connection of its own, which then ends: the
	// agent must not leave the request's bytes in that connection's
	// buffers when it frees them.
	ic, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ic.ImportKey(ctx, "", "scan", secret); err != nil {
		t.Fatal(err)
	}
	ic.Close()
	msg := []byte("memory scan message")
	useKey := func() {
		t.Helper()
		for _, alg := range providers.Algorithms() {
			useAlgorithm(t, ctx, c, "scan", alg, msg)
		}
	}
	useKey()
	pid := agent.pid()
	outside, inside := scanMemory(t, pid, patterns)
	for _, w := range inside {
		t.Logf("in locked memory: %s", w)
	}
	for _, w := range outside {
		t.Errorf("outside locked memory after %d algorithms' MACs: %s", len(providers.Algorithms()), w)
	}
	t.Logf("%d patterns, after MACs: %d found outside locked pages, %d in locked pages", len(patterns), len(outside), len(inside))

	// Restart: the key is now read from its file, whose base64 text is
	// as secret as the key.
	c.Close()
	agent.stop(os.Interrupt)
	agent = startAgent(t, env, "--socket", sock)
	c = agent.mustDial(t, sock)
	useKey()
	pid = agent.pid()
	outside, _ = scanMemory(t, pid, patterns)
	for _, w := range outside {
		t.Errorf("outside locked memory after a restart and MACs: %s", w)
	}
	t.Logf("after a restart: %d found outside locked pages", len(outside))

	// A key the agent generates: made in locked memory, its bytes known
	// to the test only from its file.
	if _, err := c.GenerateKey(ctx, "", "gen", 32); err != nil {
		t.Fatal(err)
	}
	for name, p := range keyPatterns("generated ", generatedSecret(t, filepath.Join(dir, "state"), "gen")) {
		patterns[name] = p
	}
	for _, alg := range providers.Algorithms() {
		useAlgorithm(t, ctx, c, "gen", alg, msg)
	}
	outside, inside = scanMemory(t, pid, patterns)
	for _, w := range outside {
		t.Errorf("outside locked memory after a generate and MACs: %s", w)
	}
	genInside := 0
	for _, w := range inside {
		if strings.HasPrefix(w, "generated ") {
			genInside++
		}
	}
	if genInside == 0 {
		t.Error("none of the generated key's padded blocks is in locked memory either: the test does not know the key")
	}
	t.Logf("after a generate: %d found outside locked pages, %d of the generated key's in locked pages", len(outside), genInside)

	for _, name := range []string{"scan", "gen"} {
		if err := c.DeleteKey(ctx, "", name); err != nil {
			t.Fatal(err)
		}
	}
	outside, inside = scanMemory(t, pid, patterns)
	for _, w := range append(outside, inside...) {
		t.Errorf("after delete: %s", w)
	}
	t.Logf("after delete: %d found", len(outside)+len(inside))
}

// keyPatterns is what must not be found outside locked memory for a key
// K: K, base64(K), and K⊕ipad and K⊕opad for every block size, each
// named after prefix.
func keyPatterns(prefix string, secret []byte) map[string][]byte {
	patterns := map[string][]byte{prefix + "K": secret, prefix + "base64(K)": []byte(base64.StdEncoding.EncodeToString(secret))}
	for _, alg := range providers.Algorithms() {
		b := hashes.New(alg)().BlockSize()
		for _, pad := range []struct {
			name string
			x    byte
		}{{"ipad", 0x36}, {"opad", 0x5c}} {
			block := make([]byte, b)
			copy(block, secret)
			for i := range block {
				block[i] ^= pad.x
			}
			patterns[fmt.Sprintf("%sK⊕%s (%d-byte block)", prefix, pad.name, b)] = block
		}
	}
	return patterns
}

// generatedSecret reads the key the agent generated as name from its
// file under state.
func generatedSecret(t *testing.T, state, name string) []byte {
	t.Helper()
	var secret []byte
	filepath.WalkDir(state, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != name+".key" {
			return nil
		}
		var f struct{ Secret []byte }
		data, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(data, &f)
		}
		if err != nil {
			t.Fatal(err)
		}
		secret = f.Secret
		return filepath.SkipAll
	})
	if len(secret) == 0 {
		t.Fatalf("no key file for %q under %s", name, state)
	}
	return secret
}

// useAlgorithm MACs msg with the named key in alg: a one-shot, and a
// context with a copy, both finalized.
func useAlgorithm(t *testing.T, ctx context.Context, c *client.Client, key string, alg client.Algorithm, msg []byte) {
	t.Helper()
	if _, err := c.MAC(ctx, key, alg, msg); err != nil {
		t.Fatal(err)
	}
	h, err := c.New(ctx, key, alg)
	if err != nil {
		t.Fatal(err)
	}
	h.Update(msg)
	h2, err := h.Copy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Finalize(ctx); err != nil {
		t.Fatal(err)
	}
	h2.Update(msg)
	if _, err := h2.Finalize(ctx); err != nil {
		t.Fatal(err)
	}
}
