package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// startServe runs `hmac-agent serve --config` from a binary built for
// the test and returns its stderr; the agent is stopped at cleanup.
func startServe(t *testing.T, bin, cfg string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	return cmd, &stderr
}

func waitFor(t *testing.T, path string, stderr *bytes.Buffer) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("nothing listens on %s: %s", path, stderr)
}

// TestMetricsOnUnixSocket serves metrics on "unix:/path" and checks that
// the socket is made as the agent's is: a 0700 directory of the agent's
// user holding a 0600 socket, refused when the directory is a link, and
// removed at shutdown. The page read through it parses as text format.
func TestMetricsOnUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "ha-metrics-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "hmac-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	keys := filepath.Join(dir, "keys")
	os.Mkdir(keys, 0o700)
	config := func(name, metrics string) string {
		p := filepath.Join(dir, name)
		text := "socket = \"" + filepath.Join(dir, "run", "agent.sock") + "\"\n" +
			"metrics = \"unix:" + metrics + "\"\n" +
			"[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = \"" + keys + "\"\n"
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// The metrics directory is a link to a private directory: refused.
	os.Mkdir(filepath.Join(dir, "real"), 0o700)
	os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "link"))
	out, err := exec.Command(bin, "serve", "--config", config("link.toml", filepath.Join(dir, "link", "metrics.sock"))).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is a symbolic link") {
		t.Errorf("metrics socket in a linked directory: %v: %s", err, out)
	}
	if _, err := os.Lstat(filepath.Join(dir, "real", "metrics.sock")); err == nil {
		t.Error("a metrics socket was made through the link")
	}

	path := filepath.Join(dir, "mrun", "metrics.sock")
	cmd, stderr := startServe(t, bin, config("agent.toml", path))
	waitFor(t, path, stderr)
	for p, want := range map[string]os.FileMode{filepath.Dir(path): os.ModeDir | 0o700, path: os.ModeSocket | 0o600} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode(), want)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uint32(os.Geteuid()) {
			t.Errorf("%s belongs to uid %d, not the agent's", p, st.Uid)
		}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := hc.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("metrics page: %v", err)
	}
	if fams["hmac_agent_provider_up"] == nil || fams["hmac_agent_connections"] == nil {
		t.Errorf("metrics page lacks the agent's families: %s", body)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if _, err := os.Lstat(path); err == nil {
		t.Error("the metrics socket is left behind after shutdown")
	}
}
