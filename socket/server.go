package socket

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/fair"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// Limits bound one connection's use of the server.
type Limits struct {
	// MaxFrame is the largest frame body accepted or sent.
	MaxFrame int
	// MaxInFlight bounds requests of one connection that run outside its
	// reader (on providers that may wait).
	MaxInFlight int
	// MaxQueuedBytes bounds the data of those requests: past it the
	// reader stops reading until half has drained.
	MaxQueuedBytes int
	// MaxConnections bounds open connections; one more is told so and
	// closed. Its last eighth is kept for uids holding few connections
	// (see ServeConn).
	MaxConnections int
	// MaxConnectionsPerUID bounds the open connections of one uid, so
	// that one caller cannot take every connection from the others.
	MaxConnectionsPerUID int
	// HelloTimeout is how long a new connection has to finish the
	// handshake; one that has not is closed.
	HelloTimeout time.Duration
	// IdleTimeout closes a connection that has had no open context and
	// no request running for this long. Negative disables it.
	IdleTimeout time.Duration
	// ReplyTimeout closes a connection whose peer has not taken a reply
	// the agent is writing for this long, or at least half of it (see
	// replyWriter): a caller that never reads would otherwise hold its
	// connection, and everything behind it, for good. Negative disables
	// it.
	ReplyTimeout time.Duration
	// HashTimeout bounds hashing a caller's executable at connect, where
	// a policy names a digest, from the wait for its turn to the end of
	// the read; a connection whose hash does not finish within it is
	// refused (ErrUnavailable).
	HashTimeout time.Duration
}

// DefaultLimits are the limits used for zero fields.
var DefaultLimits = Limits{
	MaxFrame:             wire.DefaultMaxFrame,
	MaxInFlight:          256,
	MaxQueuedBytes:       4 << 20,
	MaxConnections:       1024,
	MaxConnectionsPerUID: 128,
	HelloTimeout:         5 * time.Second,
	IdleTimeout:          10 * time.Minute,
	ReplyTimeout:         30 * time.Second,
	HashTimeout:          5 * time.Second,
}

// Server serves an agent on listeners.
type Server struct {
	agent      Keys
	newSession func(agent.Peer) Session
	limits     Limits
	log        *slog.Logger
	// gate shares the agent's CPUs among callers for the work readers
	// do themselves (see turns.go).
	gate *fair.Gate

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	perUID    map[int64]int // open connections by peer uid; -1 for no credentials
	stopping  bool
	connWG    sync.WaitGroup
}

// NewServer returns a server for a. A nil logger discards.
func NewServer[S Session](a Agent[S], limits Limits, log *slog.Logger) *Server {
	if limits.MaxFrame <= 0 {
		limits.MaxFrame = DefaultLimits.MaxFrame
	}
	limits.MaxFrame = max(limits.MaxFrame, wire.MinMaxFrame)
	if limits.MaxInFlight <= 0 {
		limits.MaxInFlight = DefaultLimits.MaxInFlight
	}
	if limits.MaxQueuedBytes <= 0 {
		limits.MaxQueuedBytes = DefaultLimits.MaxQueuedBytes
	}
	if limits.MaxConnections <= 0 {
		limits.MaxConnections = DefaultLimits.MaxConnections
	}
	if limits.MaxConnectionsPerUID <= 0 {
		limits.MaxConnectionsPerUID = DefaultLimits.MaxConnectionsPerUID
	}
	if limits.HelloTimeout <= 0 {
		limits.HelloTimeout = DefaultLimits.HelloTimeout
	}
	if limits.HashTimeout <= 0 {
		limits.HashTimeout = DefaultLimits.HashTimeout
	}
	switch {
	case limits.IdleTimeout == 0:
		limits.IdleTimeout = DefaultLimits.IdleTimeout
	case limits.IdleTimeout < 0:
		limits.IdleTimeout = 0
	}
	switch {
	case limits.ReplyTimeout == 0:
		limits.ReplyTimeout = DefaultLimits.ReplyTimeout
	case limits.ReplyTimeout < 0:
		limits.ReplyTimeout = 0
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		agent: a, limits: limits, log: log,
		gate:       fair.NewCPUGate(),
		newSession: func(p agent.Peer) Session { return a.NewSession(p) },
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[*conn]struct{}),
		perUID:     make(map[int64]int),
	}
}

// leave uncounts a connection ServeConn counted.
func (s *Server) leave(peer agent.Peer) {
	uid := uidKey(peer)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perUID[uid]--; s.perUID[uid] <= 0 {
		delete(s.perUID, uid)
	}
	s.gate.Share(len(s.perUID) > 1)
}

func uidKey(peer agent.Peer) int64 {
	if !peer.Known {
		return -1
	}
	return int64(peer.UID)
}

// Serve accepts connections on l until l fails or the server is shut down,
// when it returns providers.ErrClosed. The context bounds every request.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		// Shutdown came first (a signal just after start) and closed
		// the listeners it knew of: close this one as it would have,
		// which removes its socket file.
		l.Close()
		return providers.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			stopping := s.stopping
			s.mu.Unlock()
			if stopping || errors.Is(err, net.ErrClosed) {
				return providers.ErrClosed
			}
			// Running out of file descriptors passes; back off rather
			// than spin or die, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.ServeConn(ctx, nc)
	}
}

// ServeConn serves one connection in a new goroutine and returns at once.
// A connection the server will not take (shutting down, too many, too
// many of its uid's) is refused here, before any goroutine: a caller
// opening connections as fast as it can costs the agent a syscall and a
// short write each, not a goroutine and its stack, of which the runtime
// keeps some for good. The uid's limit comes before reading the
// process's identity, which may mean hashing its executable: a uid whose
// hashing waits holds no more connections than its own share.
//
// The last connections, [reservedConnections] of MaxConnections, go
// only to a uid holding fewer than [lightConnections]: a few uids at
// MaxConnectionsPerUID fill the rest, not all, and a caller with a
// connection or two (root's status, a service's client) is still taken.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	peer, _ := peerOf(nc, agent.NeedNone, 0)
	uid := uidKey(peer)
	s.mu.Lock()
	var refusal error
	reserved := reservedConnections(s.limits.MaxConnections)
	switch {
	case s.stopping:
		refusal = wire.ErrShuttingDown
	case len(s.conns) >= s.limits.MaxConnections:
		refusal = providers.Publicf(providers.ErrLimit, "too many connections (at most %d)", s.limits.MaxConnections)
	case s.perUID[uid] >= s.limits.MaxConnectionsPerUID:
		refusal = providers.Publicf(providers.ErrLimit, "too many connections for uid %d (at most %d)", peer.UID, s.limits.MaxConnectionsPerUID)
		s.log.With("peer", peer.String()).Debug("connection refused: too many for its uid")
	case len(s.conns) >= s.limits.MaxConnections-reserved && s.perUID[uid] >= lightConnections:
		refusal = providers.Publicf(providers.ErrLimit, "too many connections (at most %d, the last %d only for uids holding fewer than %d)",
			s.limits.MaxConnections, reserved, lightConnections)
		s.log.With("peer", peer.String()).Debug("connection refused: the rest are kept for uids holding few")
	}
	if refusal != nil {
		s.mu.Unlock()
		// A new connection's socket buffer is empty: the write does not
		// wait, and the deadline is only there in case it would.
		refuseWith(nc, refusal, refuseDeadline)
		return
	}
	s.perUID[uid]++
	s.gate.Share(len(s.perUID) > 1)
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.connWG.Done()
		c.serve(ctx, peer)
		s.leave(peer)
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
}

// lightConnections bounds the uids that may take a reserved connection
// (reservedConnections): one holding fewer than this, so at most this
// many with the new one. That is a process's client or two, a few
// processes of one service, root's status. At the default limits, 32
// such uids holding 4 each fill the reserve of 128 connections.
const lightConnections = 4

// reservedConnections is how many of max connections go only to uids
// holding fewer than lightConnections: the last eighth, rounded up (128
// of the default 1024), none of one. The uids that fill the rest hold at
// most max_connections_per_uid each, so filling all takes
// (max-reserved)/max_connections_per_uid heavy uids and
// reserved/lightConnections light ones more (7 and 32 at the defaults).
func reservedConnections(max int) int {
	if max < 2 {
		return 0
	}
	return (max + 7) / 8
}

// refuseDeadline bounds the write of a refusal made by the accepting
// goroutine, which serves everyone.
const refuseDeadline = 100 * time.Millisecond

// refuseWith sends a connection err, waiting at most d, then closes it.
func refuseWith(nc net.Conn, err error, d time.Duration) {
	defer nc.Close()
	m := wire.Message{Type: wire.TypeError, Code: wire.CodeOf(err), Data: []byte(err.Error())}
	b, _ := m.Append(nil)
	nc.SetWriteDeadline(time.Now().Add(d))
	nc.Write(b)
}

// Connections is how many connections are open.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// QueuedBytes is the request data connections hold for requests running
// outside their readers.
func (s *Server) QueuedBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		n += c.queued.bytes()
	}
	return n
}

// Shutdown stops accepting, lets every connection finish the requests it
// has sent, and waits for them to close, or for ctx to end, when it closes
// what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.connWG.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close stops accepting and closes every connection at once; requests in
// flight are cut.
func (s *Server) Close() error {
	s.mu.Lock()
	s.stopping = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	return nil
}
