package socket

import (
	"context"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Agent is what a Server serves, as ssh/agent's ServeAgent serves an
// Agent: a Session for each connection, and what a peer asks of the agent
// as a whole. *agent.Agent implements it, with the contract of each
// method; the package's tests serve a small fake. Its methods are called
// from many connections at once.
type Agent[S Session] interface {
	NewSession(peer agent.Peer) S
	Keys
}

// Keys is the part of Agent a connection reaches without its session:
// what it must know of a peer before there is one, the limits it
// announces, key management and status.
type Keys interface {
	IdentityNeed() agent.IdentityNeed
	Limits() agent.Limits
	MayManage(peer agent.Peer) bool
	ListKeys(ctx context.Context, peer agent.Peer) ([]providers.KeyInfo, error)
	GenerateKey(ctx context.Context, peer agent.Peer, provider, name string, length int) (providers.KeyInfo, error)
	ImportKey(ctx context.Context, peer agent.Peer, provider, name string, secret []byte) (providers.KeyInfo, error)
	ImportWrappedKey(ctx context.Context, peer agent.Peer, provider, name, wrappingKey string, wrapped []byte) (providers.KeyInfo, error)
	DeleteKey(ctx context.Context, peer agent.Peer, provider, name string) error
	RotateKey(ctx context.Context, peer agent.Peer, provider, name string, secret []byte, length int) (providers.VersionInfo, error)
	RetireVersion(ctx context.Context, peer agent.Peer, provider, name string, version int, destroy bool) error
	StatusFor(ctx context.Context, peer agent.Peer) agent.Status
}

// Session is one connection's view of the agent, with *agent.Session's
// contract. The connection calls it from its reader and from the
// goroutines its requests run on; Immediate, the reader's one question
// per request, must not wait, nor may ContextImmediate. Data that lies in a frame.Buffer comes
// with it, and whoever keeps the data past the call takes a reference of
// its own.
type Session interface {
	Budget() *providers.Budget
	Contexts() int
	IsOpen(id uint32) bool
	Immediate(key []byte) bool
	ContextImmediate(id uint32) bool
	Open(ctx context.Context, id uint32, key []byte, alg providers.Algorithm) error
	Update(ctx context.Context, id uint32, data []byte, b *frame.Buffer) error
	Fail(id uint32, err error)
	Copy(ctx context.Context, id, newID uint32) error
	FinalizeVersion(ctx context.Context, id uint32, dst []byte) (tag []byte, version int, err error)
	VerifyVersion(ctx context.Context, id uint32, tag []byte) (version int, err error)
	Abandon(id uint32)
	MACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, dst []byte) (tag []byte, version int, err error)
	VerifyMACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, tag []byte) (version int, err error)
	StartMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, dst []byte, done func(tag []byte, version int, err error))
	StartVerifyMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, tag []byte, done func(version int, err error))
	Close()
}
