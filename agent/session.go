package agent

import (
	"context"
	"crypto/subtle"
	"errors"
	"sync"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Session is one client connection's view of the agent: who the peer is
// and which contexts it has open.
type Session struct {
	agent *Agent
	peer  Peer

	mu       sync.Mutex
	contexts map[uint32]*macContext
	closed   bool
}

// macContext is an open context. err is the sticky error of a failed
// Update, reported by the next Copy, Finalize or Verify.
type macContext struct {
	mac providers.MAC
	key *resolved
	err error
}

// NewSession starts a session for a connected peer.
func (a *Agent) NewSession(peer Peer) *Session {
	a.sessions.Add(1)
	return &Session{agent: a, peer: peer, contexts: make(map[uint32]*macContext)}
}

// Peer returns the session's peer.
func (s *Session) Peer() Peer { return s.peer }

// Open opens context id on the named key. Errors wrap ErrKeyNotFound,
// ErrPermissionDenied, ErrUnsupportedAlgorithm, ErrLimit, or
// ErrInvalidArgument if id is in use.
func (s *Session) Open(ctx context.Context, id uint32, key []byte, alg providers.Algorithm) error {
	r, err := s.agent.resolve(ctx, key)
	if err != nil {
		return err
	}
	if err := s.agent.check(s.peer, r, OpMAC|OpVerify); err != nil {
		return err
	}
	if !r.key.Supports(alg) {
		return providers.Publicf(providers.ErrUnsupportedAlgorithm, "key %q (provider %q) cannot do %s", r.name, r.provider.Name(), alg)
	}
	if err := s.reserve(id); err != nil {
		return err
	}
	m, err := r.key.NewMAC(ctx, alg)
	if err != nil {
		s.release(id)
		return s.keyFailed(r, err)
	}
	return s.install(id, &macContext{mac: m, key: r})
}

// install puts an opened context in the place reserve made for it.
func (s *Session) install(id uint32, c *macContext) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed { // Close already gave the reservation back
		c.mac.Close()
		return providers.ErrClosed
	}
	s.contexts[id] = c
	return nil
}

// reserve claims id and a place under the limits. The map holds nil for
// a reserved id until the context exists.
func (s *Session) reserve(id uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return providers.ErrClosed
	}
	if _, used := s.contexts[id]; used {
		return providers.Publicf(providers.ErrInvalidArgument, "context %d is already open on this connection", id)
	}
	if max := s.agent.limits.MaxContextsPerSession; len(s.contexts) >= max {
		return providers.Publicf(providers.ErrLimit, "too many open contexts on this connection (at most %d)", max)
	}
	if n := s.agent.contexts.Add(1); n > int64(s.agent.limits.MaxContexts) {
		s.agent.contexts.Add(-1)
		return providers.Publicf(providers.ErrLimit, "too many open contexts in the agent (at most %d)", s.agent.limits.MaxContexts)
	}
	s.contexts[id] = nil
	return nil
}

func (s *Session) release(id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed { // else Close gave it back
		delete(s.contexts, id)
		s.agent.contexts.Add(-1)
	}
}

// get returns context id; remove also takes it out of the session.
func (s *Session) get(id uint32, remove bool) (*macContext, error) {
	s.mu.Lock()
	c := s.contexts[id]
	if c != nil && remove {
		delete(s.contexts, id)
	}
	s.mu.Unlock()
	if c == nil {
		return nil, providers.Publicf(providers.ErrUnknownContext, "context %d is not open on this connection", id)
	}
	if remove {
		s.agent.contexts.Add(-1)
	}
	return c, nil
}

// keyFailed turns a provider's error into what the client sees, and drops
// a key that vanished from the cache.
func (s *Session) keyFailed(r *resolved, err error) error {
	if errors.Is(err, providers.ErrKeyNotFound) {
		s.agent.forget(r.name)
		return providers.Publicf(providers.ErrKeyNotFound, "key %q not found", r.name)
	}
	if _, ok := errors.AsType[*providers.PublicError](err); !ok {
		s.agent.log.Warn("provider operation failed", "key", r.name, "provider", r.provider.Name(), "err", err)
	}
	return err
}

// Update appends p to context id. An error from the provider sticks to the
// context; Update itself fails only when there is no such context.
func (s *Session) Update(ctx context.Context, id uint32, p []byte) error {
	c, err := s.get(id, false)
	if err != nil {
		return err
	}
	if c.err == nil {
		if err := c.mac.Update(ctx, p); err != nil {
			c.err = s.keyFailed(c.key, err)
		}
	}
	return nil
}

// Copy opens newID as a copy of id. It reports id's sticky error; a failed
// copy leaves id as it was.
func (s *Session) Copy(ctx context.Context, id, newID uint32) error {
	c, err := s.get(id, false)
	if err != nil {
		return err
	}
	if c.err != nil {
		return c.err
	}
	if err := s.reserve(newID); err != nil {
		return err
	}
	m, err := c.mac.Copy(ctx)
	if err != nil {
		s.release(newID)
		return s.keyFailed(c.key, err)
	}
	return s.install(newID, &macContext{mac: m, key: c.key})
}

// Finalize finishes context id and appends its tag to dst. A peer allowed
// only to verify gets ErrPermissionDenied, and the context is finished all
// the same.
func (s *Session) Finalize(ctx context.Context, id uint32, dst []byte) ([]byte, error) {
	c, err := s.get(id, true)
	if err != nil {
		return nil, err
	}
	defer c.mac.Close()
	if c.err != nil {
		return nil, c.err
	}
	if err := s.agent.check(s.peer, c.key, OpMAC); err != nil {
		return nil, err
	}
	tag, err := c.mac.Finalize(ctx)
	if err != nil {
		return nil, s.keyFailed(c.key, err)
	}
	return append(dst, tag...), nil
}

// Verify finishes context id and checks tag in constant time. Errors wrap
// ErrInvalidSignature, ErrPermissionDenied or the sticky error.
func (s *Session) Verify(ctx context.Context, id uint32, tag []byte) error {
	c, err := s.get(id, true)
	if err != nil {
		return err
	}
	defer c.mac.Close()
	if c.err != nil {
		return c.err
	}
	if err := s.agent.check(s.peer, c.key, OpVerify); err != nil {
		return err
	}
	if err := c.mac.Verify(ctx, tag); err != nil {
		if errors.Is(err, providers.ErrInvalidSignature) {
			return providers.ErrInvalidSignature
		}
		return s.keyFailed(c.key, err)
	}
	return nil
}

// Abandon frees context id without a result. An unknown id is ignored:
// abandoning is idempotent.
func (s *Session) Abandon(id uint32) {
	if c, err := s.get(id, true); err == nil {
		c.mac.Close()
	}
}

// MAC computes a whole tag in one call and appends it to dst.
func (s *Session) MAC(ctx context.Context, key []byte, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	r, err := s.oneShotKey(ctx, key, alg, OpMAC)
	if err != nil {
		return nil, err
	}
	if r.oneShot != nil {
		tag, err := r.oneShot.SumMAC(ctx, alg, data, dst)
		if err != nil {
			return nil, s.keyFailed(r, err)
		}
		return tag, nil
	}
	m, err := r.key.NewMAC(ctx, alg)
	if err != nil {
		return nil, s.keyFailed(r, err)
	}
	defer m.Close()
	if err := m.Update(ctx, data); err != nil {
		return nil, s.keyFailed(r, err)
	}
	tag, err := m.Finalize(ctx)
	if err != nil {
		return nil, s.keyFailed(r, err)
	}
	return append(dst, tag...), nil
}

// VerifyMAC checks tag over data in one call, in constant time.
func (s *Session) VerifyMAC(ctx context.Context, key []byte, alg providers.Algorithm, data, tag []byte) error {
	r, err := s.oneShotKey(ctx, key, alg, OpVerify)
	if err != nil {
		return err
	}
	if r.verifier != nil {
		if err := r.verifier.VerifyMAC(ctx, alg, data, tag); err != nil {
			if errors.Is(err, providers.ErrInvalidSignature) {
				return providers.ErrInvalidSignature
			}
			return s.keyFailed(r, err)
		}
		return nil
	}
	if r.oneShot != nil {
		var buf [64]byte
		sum, err := r.oneShot.SumMAC(ctx, alg, data, buf[:0])
		if err != nil {
			return s.keyFailed(r, err)
		}
		if subtle.ConstantTimeCompare(sum, tag) != 1 {
			return providers.ErrInvalidSignature
		}
		return nil
	}
	m, err := r.key.NewMAC(ctx, alg)
	if err != nil {
		return s.keyFailed(r, err)
	}
	defer m.Close()
	if err := m.Update(ctx, data); err != nil {
		return s.keyFailed(r, err)
	}
	if err := m.Verify(ctx, tag); err != nil {
		if errors.Is(err, providers.ErrInvalidSignature) {
			return providers.ErrInvalidSignature
		}
		return s.keyFailed(r, err)
	}
	return nil
}

func (s *Session) oneShotKey(ctx context.Context, key []byte, alg providers.Algorithm, op Ops) (*resolved, error) {
	r, err := s.agent.resolve(ctx, key)
	if err != nil {
		return nil, err
	}
	if err := s.agent.check(s.peer, r, op); err != nil {
		return nil, err
	}
	if !r.key.Supports(alg) {
		return nil, providers.Publicf(providers.ErrUnsupportedAlgorithm, "key %q (provider %q) cannot do %s", r.name, r.provider.Name(), alg)
	}
	return r, nil
}

// Contexts is how many contexts the session has open.
func (s *Session) Contexts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.contexts)
}

// Close frees every context. The session is unusable afterwards.
func (s *Session) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	contexts := s.contexts
	s.contexts = nil
	s.mu.Unlock()
	for _, c := range contexts {
		if c != nil { // nil: reserved by an Open still running
			c.mac.Close()
		}
		s.agent.contexts.Add(-1)
	}
	s.agent.sessions.Add(-1)
}
