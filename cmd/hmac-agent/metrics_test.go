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

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestMetricsOnUnixSocket serves metrics on "unix:/path" and checks that
// the socket is made as the agent's is: a 0700 directory of the agent's
// user holding a 0600 socket, refused when the directory is a link, and
// removed at shutdown. The page read through it parses as text format.
func TestMetricsOnUnixSocket(t *testing.T) {
	dir := agenttest.SocketDir(t)
	bin := agentBinary(t)
	keys := filepath.Join(dir, "keys")
	os.Mkdir(keys, 0o700)
	config := func(name, metrics string) string {
		p := filepath.Join(dir, name)
		text := "socket = \"" + filepath.Join(dir, "run", "agent.sock") + "\"\n" +
			"metrics = \"unix:" + metrics + "\"\n" +
			"[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = \"" + keys + "\"\n"
		writeFile(t, p, text, 0o600)
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
	agent := startAgent(t, nil, "--config", config("agent.toml", path))
	agent.waitListening(t, path)
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

	agent.stop(syscall.SIGTERM)
	if _, err := os.Lstat(path); err == nil {
		t.Error("the metrics socket is left behind after shutdown")
	}
}
