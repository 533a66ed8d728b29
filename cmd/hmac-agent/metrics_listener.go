package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/config"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/socket"
)

// The metrics listener is a convenience for a Prometheus scraper, which
// sends a request of a few hundred bytes every few seconds or more. It
// must never hurt the agent's real callers, whoever connects to it: it
// holds at most metricsMaxConnections connections at once, each with a
// deadline on every phase, and builds the page at most once per
// metricsPageInterval. A connection beyond the cap waits in the kernel's
// queue, where it costs the agent neither a descriptor nor memory, until
// a deadline frees a slot. Variables, so that tests can shorten them.
var (
	// metricsMaxConnections is how many connections the listener holds
	// at once.
	metricsMaxConnections = 16
	// metricsReadHeaderTimeout bounds the wait for a request's header:
	// from the accept for a connection's first, from its first byte for
	// a later one.
	metricsReadHeaderTimeout = 5 * time.Second
	// metricsReadTimeout bounds the reading of a whole request.
	metricsReadTimeout = 10 * time.Second
	// metricsWriteTimeout bounds a response, from the end of its
	// request's header.
	metricsWriteTimeout = 10 * time.Second
	// metricsMaxHeaderBytes bounds a request's header; net/http reads
	// 4 KiB past it before it answers 431.
	metricsMaxHeaderBytes = 4 << 10
	// metricsPageInterval is how long a built page is served before the
	// next scrape builds it again: the oldest page a scrape may see.
	metricsPageInterval = time.Second
)

// serveMetrics serves /metrics at cfg.Metrics until stopped. A TCP
// listener shows key names and use counts to every local user; a Unix
// socket ("unix:/path") is made as the agent's own is (socket.Listen: a
// private directory that is never a link, the socket 0600, or 0750 and
// 0660 for socket_group), so that only those who may talk to the agent
// read what it is asked.
func serveMetrics(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (func(), error) {
	var l net.Listener
	where := cfg.Metrics
	if path, ok := cfg.MetricsSocket(); ok {
		gid := -1
		if cfg.SocketGroup != "" {
			gid, _ = config.LookupGroup(cfg.SocketGroup) // validated
		}
		ul, err := socket.Listen(path, gid)
		if err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		l = ul
	} else {
		tl, err := net.Listen("tcp", cfg.Metrics)
		if err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		l, where = tl, tl.Addr().String() // the port chosen for ":0"
	}
	stop := startMetricsServer(l, newPageCache(m.WritePage), log)
	// A Unix socket's own address is its name under the directory held
	// open (/proc/self/fd/N/...): the log says the configured path.
	log.Info("metrics listening", "address", where)
	return stop, nil
}

// startMetricsServer serves page at /metrics on l, within the bounds
// above, until the func it returns is called; that func closes l and
// every connection.
func startMetricsServer(l net.Listener, page *pageCache, log *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", page)
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		ReadTimeout:       metricsReadTimeout,
		WriteTimeout:      metricsWriteTimeout,
		MaxHeaderBytes:    metricsMaxHeaderBytes,
		// What net/http says of a connection (a malformed request, a
		// query with a semicolon) is a client's doing, at its rate:
		// debug only.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	// One request a connection: a kept-alive connection that asks again
	// before any idle timeout would hold its slot for good, and sixteen
	// of them would keep every scraper out. A scrape every few seconds
	// connects each time, which costs little.
	hs.SetKeepAlivesEnabled(false)
	ll := newLimitListener(l, metricsMaxConnections)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Serve waits and retries after a temporary accept error (too
		// many open files), from 5 ms up to a second: it never spins.
		if err := hs.Serve(ll); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	return func() {
		hs.Close()
		<-done
	}
}

// limitListener is a net.Listener that holds at most a fixed number of
// connections at once: Accept takes a slot before it takes a connection
// from the kernel's queue, waiting while none is free, and a
// connection's Close gives its slot back. Accept is for one goroutine at
// a time, as http.Server calls it; Close may be called from any.
type limitListener struct {
	net.Listener
	slots     chan struct{} // one element per connection held
	closed    chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection. After Close it
// returns net.ErrClosed.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

// Close closes the listener, and ends an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// held is how many connections the listener holds now.
func (l *limitListener) held() int { return len(l.slots) }

// limitConn is a connection holding a slot of its listener until closed.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite shuts the connection's sending side where it can. net/http
// does after refusing a request (431), so that the client reads the
// answer to its end before the connection closes.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// pageCache serves the metrics page, built at most once per
// metricsPageInterval: scrapes within it get the same bytes, so that a
// flood of scrapes costs a copy of them, not a build each. One build
// runs at a time; scrapes that come during it wait for it and serve what
// it built. A scrape never gets a page whose build began longer than the
// interval before the scrape asked for it. It is safe for concurrent use.
type pageCache struct {
	build func(io.Writer)
	now   func() time.Time

	mu    sync.Mutex // held during a build
	page  []byte     // never changed once built: scrapes write it unlocked
	built time.Time  // when the build of page began
}

func newPageCache(build func(io.Writer)) *pageCache {
	return &pageCache{build: build, now: time.Now}
}

// get returns the page, building it if the last was built an interval
// ago or more.
func (c *pageCache) get() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.page == nil || now.Sub(c.built) >= metricsPageInterval || now.Before(c.built) {
		// A new buffer each time: slow scrapes may still be writing the
		// last one.
		b := bytes.NewBuffer(make([]byte, 0, len(c.page)+len(c.page)/8+512))
		c.build(b)
		c.page, c.built = b.Bytes(), now
	}
	return c.page
}

func (c *pageCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	page := c.get()
	w.Header().Set("Content-Type", metrics.ContentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(page)))
	w.Write(page)
}
