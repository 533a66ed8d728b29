package socket

import (
	"context"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Agent is what a Server serves, as ssh/agent's ServeAgent serves an
// Agent: a Session for each connection, and what a peer asks of the agent
// as a whole. *agent.Agent implements it with *agent.Session; the
// package's tests serve a small fake. Every method is called from many
// connections at once.
type Agent[S Session] interface {
	Keys
	// NewSession starts the session of a connection from peer.
	NewSession(peer agent.Peer) S
}

// Keys is the part of Agent that a connection reaches without a session:
// what it must know of a peer before one exists, limits it announces, key
// management and status. Their errors are the agent's, safe to send.
type Keys interface {
	IdentityNeed() agent.IdentityNeed
	Limits() agent.Limits
	ListKeys(ctx context.Context, peer agent.Peer) ([]providers.KeyInfo, error)
	GenerateKey(ctx context.Context, peer agent.Peer, provider, name string, length int) (providers.KeyInfo, error)
	ImportKey(ctx context.Context, peer agent.Peer, provider, name string, secret []byte) (providers.KeyInfo, error)
	ImportWrappedKey(ctx context.Context, peer agent.Peer, provider, name, wrappingKey string, wrapped []byte) (providers.KeyInfo, error)
	DeleteKey(ctx context.Context, peer agent.Peer, provider, name string) error
	RotateKey(ctx context.Context, peer agent.Peer, provider, name string, secret []byte, length int) (providers.VersionInfo, error)
	RetireVersion(ctx context.Context, peer agent.Peer, provider, name string, version int, destroy bool) error
	StatusFor(ctx context.Context, peer agent.Peer) agent.Status
}

// Session is one connection's view of the agent: its contexts and its
// one-shots. The connection calls it from its reader and from the
// goroutines its requests run on, never two requests of one context at
// once. The contract of each method is *agent.Session's.
type Session interface {
	// Budget is the peer's uid's budget, charged for what the connection
	// holds; nil charges nothing.
	Budget() *providers.Budget
	// Contexts is how many contexts are open, for the idle timeout.
	Contexts() int
	// Immediate is the reader's one question: may a request on key run
	// inline, because it never waits? It must not wait itself.
	Immediate(key []byte) bool
	Open(ctx context.Context, id uint32, key []byte, alg providers.Algorithm) error
	// Update's data lies in b when b is not nil: whoever keeps it past
	// the call takes a reference of its own.
	Update(ctx context.Context, id uint32, data []byte, b *frame.Buffer) error
	Fail(id uint32, err error)
	Copy(ctx context.Context, id, newID uint32) error
	FinalizeVersion(ctx context.Context, id uint32, dst []byte) (tag []byte, version int, err error)
	VerifyVersion(ctx context.Context, id uint32, tag []byte) (version int, err error)
	Abandon(id uint32)
	// MACVersion and VerifyMACVersion run a one-shot inline.
	MACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data, dst []byte) (tag []byte, version int, err error)
	VerifyMACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data, tag []byte) (version int, err error)
	// StartMAC and StartVerifyMAC start a one-shot that may wait and
	// return at once; done answers it exactly once, and must not wait.
	StartMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, dst []byte, done func(tag []byte, version int, err error))
	StartVerifyMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, tag []byte, done func(version int, err error))
	// Close ends every context; the session is not used afterwards.
	Close()
}
