package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
)

// The tests here run the metrics server in this process on a real
// listener, TCP on loopback and a Unix socket, with its bounds shortened
// or lengthened so that only the one a test is about can end a
// connection within the test. Those that run the agent as a process are
// in metrics_test.go.

// metricsBounds sets the metrics listener's timeouts for one test, and
// puts the defaults back when it ends.
func metricsBounds(t *testing.T, readHeader time.Duration) {
	t.Helper()
	saved := []time.Duration{metricsReadHeaderTimeout, metricsReadTimeout, metricsWriteTimeout}
	t.Cleanup(func() {
		metricsReadHeaderTimeout, metricsReadTimeout, metricsWriteTimeout = saved[0], saved[1], saved[2]
	})
	metricsReadHeaderTimeout = readHeader
	metricsReadTimeout, metricsWriteTimeout = time.Minute, time.Minute
}

// metricsServer is a metrics server a test runs in this process.
type metricsServer struct {
	network, addr string
}

// fill opens as many connections as the server holds at once, sending
// nothing on them.
func (s metricsServer) fill(t *testing.T) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, metricsMaxConnections)
	for i := range conns {
		conns[i] = s.dial(t)
	}
	return conns
}

// dial connects to the server, failing the test if it cannot; the
// connection is closed when the test ends.
func (s metricsServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial(s.network, s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// client is an HTTP client that reaches the server whatever the URL's
// host.
func (s metricsServer) client() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, s.network, s.addr)
	}}}
}

// onMetricsListeners runs test once on a TCP listener on loopback and
// once on a Unix socket, each wrapped by wrap if it is not nil, serving
// page with the bounds as they are when it starts.
func onMetricsListeners(t *testing.T, page func() *pageCache, wrap func(net.Listener) net.Listener, test func(t *testing.T, s metricsServer)) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(agenttest.SocketDir(t), "metrics.sock")
			}
			l, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			s := metricsServer{network, l.Addr().String()}
			if wrap != nil {
				l = wrap(l)
			}
			stop := startMetricsServer(l, page(), slog.New(slog.DiscardHandler))
			t.Cleanup(stop)
			test(t, s)
		})
	}
}

// fixedPage is a page cache whose build writes one line.
func fixedPage() *pageCache {
	return newPageCache(func(w io.Writer) { io.WriteString(w, "hmac_agent_test 1\n") })
}

const scrapeRequest = "GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n"

// readResponse reads one response from c, waiting at most wait, with
// its body.
func readResponse(c net.Conn, wait time.Duration) (*http.Response, []byte, error) {
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body, err
}

// waitClosed waits up to a minute for the server to close c, failing the
// test if it has not or if c carries anything more.
func waitClosed(t *testing.T, c net.Conn, why string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("%s: the connection is still open a minute later", why)
	case n > 0:
		t.Errorf("%s: the server sent more on the connection", why)
	}
}

// TestMetricsOneRequestAConnection: the server closes a connection once
// it has answered its request, whatever the client asked for: a
// kept-alive connection that asked again every few seconds held its slot
// for good. Every timeout is a minute, so only that can close it within
// the wait.
func TestMetricsOneRequestAConnection(t *testing.T) {
	metricsBounds(t, time.Minute)
	onMetricsListeners(t, fixedPage, nil, func(t *testing.T, s metricsServer) {
		c := s.dial(t)
		io.WriteString(c, scrapeRequest)
		resp, body, err := readResponse(c, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !resp.Close || string(body) != "hmac_agent_test 1\n" {
			t.Fatalf("scrape: %s, close %v, body %q", resp.Status, resp.Close, body)
		}
		waitClosed(t, c, "a connection after its response")
	})
}

// countingListener counts the bytes the server reads from each
// connection it accepts.
type countingListener struct {
	net.Listener
	mu    sync.Mutex
	reads []*atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	n := new(atomic.Int64)
	l.mu.Lock()
	l.reads = append(l.reads, n)
	l.mu.Unlock()
	return countingConn{c, n}, nil
}

// most is the most bytes read from one connection, and how many
// connections there were.
func (l *countingListener) most() (most int64, conns int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.reads {
		most = max(most, n.Load())
	}
	return most, len(l.reads)
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// TestMetricsHeaderTooLarge: requests whose header grows to 1 MiB
// without end, sent on more connections than the cap, are each answered
// 431 and closed once metricsMaxHeaderBytes and net/http's 4 KiB beyond
// it have been read: the server never reads, so never holds, the rest.
func TestMetricsHeaderTooLarge(t *testing.T) {
	metricsBounds(t, time.Minute)
	var counted *countingListener
	wrap := func(l net.Listener) net.Listener {
		counted = &countingListener{Listener: l}
		return counted
	}
	onMetricsListeners(t, fixedPage, wrap, func(t *testing.T, s metricsServer) {
		conns := metricsMaxConnections + 4
		header := "GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Pad: " + strings.Repeat("a", 1<<20)
		var wg sync.WaitGroup
		for i := range conns {
			c := s.dial(t)
			wg.Go(func() {
				go io.WriteString(c, header) // fails once the server closes
				c.SetReadDeadline(time.Now().Add(time.Minute))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Errorf("connection %d: %v", i, err)
					return
				}
				if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
					t.Errorf("connection %d: %s, want 431", i, resp.Status)
				}
				// The answer's body runs to the close, which may come as
				// a reset (the request was left unread): any end but
				// the deadline will do.
				_, err = io.Copy(io.Discard, resp.Body)
				if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("connection %d: still open a minute after its 431", i)
				}
			})
		}
		wg.Wait()
		most, n := counted.most()
		if n != conns {
			t.Errorf("the server accepted %d connections, want %d", n, conns)
		}
		if limit := int64(metricsMaxHeaderBytes + 8<<10); most > limit {
			t.Errorf("the server read %d bytes of one request's header, more than %d", most, limit)
		}
		t.Logf("at most %d bytes read of a 1 MiB header", most)
	})
}

// TestMetricsConnectionCap: with metricsMaxConnections connections that
// send nothing held (the header timeout is a minute), a scrape on one
// more is not answered; once one of them closes, it is.
func TestMetricsConnectionCap(t *testing.T) {
	metricsBounds(t, time.Minute)
	onMetricsListeners(t, fixedPage, nil, func(t *testing.T, s metricsServer) {
		// Dialled one after another, so that the kernel queues them,
		// and the server accepts them, before the scrape.
		silent := s.fill(t)
		scrape := s.dial(t)
		io.WriteString(scrape, scrapeRequest)
		if resp, _, err := readResponse(scrape, 500*time.Millisecond); err == nil {
			t.Fatalf("a scrape past the cap of %d connections was answered %s", metricsMaxConnections, resp.Status)
		}
		silent[0].Close()
		resp, _, err := readResponse(scrape, time.Minute)
		if err != nil {
			t.Fatalf("a slot was freed, but the scrape waiting for it was not answered: %v", err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("scrape: %s", resp.Status)
		}
	})
}

// TestMetricsSilentConnectionsOnlyDelay: connections that fill every
// slot and send nothing are closed at the header timeout, and a scrape
// queued behind them is then answered.
func TestMetricsSilentConnectionsOnlyDelay(t *testing.T) {
	metricsBounds(t, 200*time.Millisecond)
	onMetricsListeners(t, fixedPage, nil, func(t *testing.T, s metricsServer) {
		silent := s.fill(t)
		scrape := s.dial(t)
		io.WriteString(scrape, scrapeRequest)
		resp, _, err := readResponse(scrape, time.Minute)
		if err != nil {
			t.Fatalf("scrape behind %d silent connections: %v", len(silent), err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("scrape: %s", resp.Status)
		}
		for _, c := range silent {
			waitClosed(t, c, "connection that sent nothing")
		}
	})
}

// TestMetricsPageBuiltOncePerInterval: scrapes within metricsPageInterval
// of a build, one after another or at once, get its bytes without a
// build of their own; the first at the interval builds the page again.
// The page cache's clock is the test's.
func TestMetricsPageBuiltOncePerInterval(t *testing.T) {
	var (
		builds atomic.Int64
		mu     sync.Mutex
		now    = time.Now()
	)
	advance := func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
	page := func() *pageCache {
		builds.Store(0)
		c := newPageCache(func(w io.Writer) { fmt.Fprintf(w, "hmac_agent_test_builds %d\n", builds.Add(1)) })
		c.now = func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return now
		}
		return c
	}
	onMetricsListeners(t, page, nil, func(t *testing.T, s metricsServer) {
		hc := s.client()
		get := func(method string) (*http.Response, string) {
			t.Helper()
			req, _ := http.NewRequest(method, "http://agent/metrics", nil)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp, string(body)
		}
		scrape := func(want string) {
			t.Helper()
			resp, body := get("GET")
			if resp.StatusCode != http.StatusOK || body != want {
				t.Errorf("scrape: %s %q, want %q", resp.Status, body, want)
			}
			if ct := resp.Header.Get("Content-Type"); ct != metrics.ContentType {
				t.Errorf("Content-Type %q", ct)
			}
		}

		scrape("hmac_agent_test_builds 1\n")
		advance(metricsPageInterval / 2)
		scrape("hmac_agent_test_builds 1\n")
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() { scrape("hmac_agent_test_builds 1\n") })
		}
		wg.Wait()
		if resp, _ := get("POST"); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /metrics: %s", resp.Status)
		}
		if n := builds.Load(); n != 1 {
			t.Errorf("%d builds for scrapes within the interval, want 1", n)
		}
		advance(metricsPageInterval / 2)
		scrape("hmac_agent_test_builds 2\n")
		if n := builds.Load(); n != 2 {
			t.Errorf("%d builds once the interval passed, want 2", n)
		}
	})
}

// TestLimitListenerClose: Close ends an Accept waiting for a slot.
func TestLimitListenerClose(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ll := newLimitListener(l, 1)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	held, err := ll.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	accepted := make(chan error, 1)
	go func() {
		_, err := ll.Accept()
		accepted <- err
	}()
	ll.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if ll.held() != 1 {
		t.Errorf("%d connections held, want 1", ll.held())
	}
	held.Close()
	held.Close()
	if ll.held() != 0 {
		t.Errorf("%d connections held after the last closed (twice), want 0", ll.held())
	}
}
