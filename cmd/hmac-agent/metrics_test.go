package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
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

// TestMetricsListenerBounds runs the agent with its metrics on TCP and on
// a Unix socket, and attacks the metrics listener as the outside attack
// run did: far more connections than its cap, each sending a scrape and
// then sitting, leave the agent with at most the cap's descriptors more
// than before (it never reaches its own limit), while HMACs on its
// socket go on; then requests whose header grows to 1 MiB without end
// are each refused with 431 and leave the agent's peak memory as it was.
func TestMetricsListenerBounds(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			dir := agenttest.SocketDir(t)
			sock := filepath.Join(dir, "agent.sock")
			metricsAddr := "127.0.0.1:0"
			if network == "unix" {
				metricsAddr = "unix:" + filepath.Join(dir, "mrun", "metrics.sock")
			}
			conf := filepath.Join(dir, "agent.toml")
			writeFile(t, conf, fmt.Sprintf("socket = %q\nmetrics = %q\n", sock, metricsAddr)+
				softwareConfig(filepath.Join(dir, "keys"))+
				fmt.Sprintf("[[key]]\nname = \"k\"\nprovider = \"soft\"\nobject = \"k\"\n[key.policy]\nusers = [%d]\n", os.Geteuid()), 0o600)
			agent := startAgent(t, nil, "--config", conf)
			c := agent.mustDial(t, sock)
			ctx := context.Background()
			if _, err := c.ImportKey(ctx, "soft", "k", []byte("metrics-listener-secret")); err != nil {
				t.Fatal(err)
			}
			mac := func(why string) {
				t.Helper()
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if _, err := c.MAC(ctx, "k", client.SHA256, []byte(why)); err != nil {
					t.Errorf("HMAC %s: %v", why, err)
				}
			}
			addr := strings.TrimPrefix(metricsAddress(t, agent), "unix:")
			dial := func() (net.Conn, error) { return net.Dial(network, addr) }

			// A first scrape, so that what a scrape leaves behind is
			// in the baseline.
			first, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(first, scrapeRequest)
			if resp, _, err := readResponse(first, time.Minute); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("first scrape: %v %v", resp, err)
			}
			first.Close()
			mac("before the attack")
			fds := openFDs(t, agent.pid())

			// Far more connections than the cap, each silent: one
			// holds its slot until its header deadline, and a scrape
			// would be answered and closed at once.
			const conns = 20 * 16
			held := make([]net.Conn, 0, conns)
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for range conns {
				c, err := dial()
				if err != nil {
					t.Fatalf("connection %d: %v", len(held), err)
				}
				held = append(held, c)
			}
			// The agent takes up to the cap, and never more.
			limit := fds + metricsMaxConnections + 4
			most := 0
			settled := time.Time{}
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				n := openFDs(t, agent.pid())
				most = max(most, n)
				if settled.IsZero() && n >= fds+metricsMaxConnections {
					settled = time.Now()
				}
				if !settled.IsZero() && time.Since(settled) > time.Second {
					break
				}
			}
			if settled.IsZero() {
				t.Errorf("the agent never took %d of the connections: at most %d descriptors, %d before", metricsMaxConnections, most, fds)
			}
			if most > limit {
				t.Errorf("%d connections to the metrics listener took the agent from %d descriptors to %d, more than %d (cap %d)", conns, fds, most, limit, metricsMaxConnections)
			}
			t.Logf("%d connections: %d descriptors before, at most %d after", conns, fds, most)
			mac("with the metrics listener full")
			for _, c := range held {
				c.Close()
			}
			held = held[:0]

			// Headers that grow to 1 MiB without end, many at once.
			_, peak := agenttest.ProcessMemory(t, agent.pid())
			header := "GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Pad: " + strings.Repeat("a", 1<<20)
			var wg sync.WaitGroup
			for i := range 4 * 16 {
				c, err := dial()
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				defer c.Close()
				wg.Go(func() {
					go io.WriteString(c, header) // fails once the agent closes
					c.SetReadDeadline(time.Now().Add(time.Minute))
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err != nil {
						t.Errorf("oversized header %d: %v", i, err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
						t.Errorf("oversized header %d: %s, want 431", i, resp.Status)
					}
				})
			}
			wg.Wait()
			_, after := agenttest.ProcessMemory(t, agent.pid())
			if grew := after - peak; grew > 16<<20 {
				t.Errorf("64 headers of 1 MiB took the agent's peak memory from %d MiB to %d MiB", peak>>20, after>>20)
			}
			t.Logf("peak memory %d KiB before 64 headers of 1 MiB, %d KiB after", peak>>10, after>>10)
			mac("after the attack")
		})
	}
}

// metricsAddress waits for the agent's log to say where its metrics
// listen, and returns that address: host:port, or unix:/path.
func metricsAddress(t *testing.T, p *process) string {
	t.Helper()
	re := regexp.MustCompile(`msg="metrics listening" address=(\S+)`)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(p.logs()); m != nil {
			return m[1]
		}
	}
	t.Fatalf("the agent never said where its metrics listen:\n%s", p.logs())
	return ""
}

// openFDs counts the descriptors process pid has open.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}
