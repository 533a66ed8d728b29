package agent

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

// maxTombstones bounds how many context IDs freed for idleness a session
// remembers in order to say why a request on one fails.
const maxTombstones = 1024

// Session is one client connection's view of the agent: who the peer is
// and which contexts it has open.
type Session struct {
	agent  *Agent
	peer   Peer
	caller *caller // the peer's uid's share of the agent

	mu       sync.Mutex
	contexts map[uint32]*macContext
	// ended holds contexts the agent ended on its own (idle, or revoked
	// by a reload) with the error their next request gets, until it is
	// reported.
	ended  map[uint32]error
	closed bool
}

// macContext is an open context. err is the sticky error of a failed
// Update, reported by the next Copy, Finalize or Verify. busy is set while
// a request uses the context, so the idle sweeper leaves it alone.
type macContext struct {
	mac providers.MAC
	key *resolved
	// ops are the operations the peer had on key when the context
	// opened; a reload that takes one away ends the context.
	ops Ops
	alg providers.Algorithm
	// version is the key version that finalizes: the current one when
	// the context opened, kept through copies and rotations.
	version int
	err     error
	bytes   int64
	opened  time.Time
	lastUse int64 // the agent's coarse clock
	busy    bool
	// lost is set when a call on the context passed its provider's
	// deadline: the call, still running, owns mac and closes it when it
	// returns, and the context answers err (ErrContextLost) from then on.
	lost bool
}

// NewSession starts a session for a connected peer.
func (a *Agent) NewSession(peer Peer) *Session {
	s := &Session{agent: a, peer: peer, contexts: make(map[uint32]*macContext)}
	if peer.Known {
		s.caller = a.callers.join(peer.UID, a.limits.MaxBytesPerUID)
	} else {
		// A peer without credentials shares nobody's limits, root's
		// least of all.
		s.caller = a.callers.newCaller(0, a.limits.MaxBytesPerUID)
	}
	a.sessions.Add(1)
	a.sessionsMu.Lock()
	a.live[s] = struct{}{}
	a.sessionsMu.Unlock()
	return s
}

// Budget is the peer's uid's budget of bytes held (Limits.MaxBytesPerUID),
// shared by all its sessions. The connection charges what it holds for the
// peer to it and passes it to providers in every call's context
// (providers.WithBudget).
func (s *Session) Budget() *providers.Budget { return s.caller.budget }

// uncount gives back a context's place under the limits.
func (s *Session) uncount() {
	s.agent.contexts.Add(-1)
	s.caller.contexts.Add(-1)
}

// Open opens context id on the named key. Errors wrap ErrKeyNotFound,
// ErrPermissionDenied, ErrUnsupportedAlgorithm, ErrLimit, or
// ErrInvalidArgument if id is in use.
func (s *Session) Open(ctx context.Context, id uint32, key []byte, alg providers.Algorithm) error {
	r, err := s.agent.lookup(ctx, s.peer, key, OpMAC|OpVerify)
	if err != nil {
		if errors.Is(err, providers.ErrPermissionDenied) {
			s.agent.auditUse(s.peer, "open", string(key), alg, err, 0, time.Time{})
		}
		return err
	}
	keys := r.verifyKeys()
	if !keys[0].key.Supports(alg) {
		return providers.Publicf(providers.ErrUnsupportedAlgorithm, "key %q (provider %q) cannot do %s", r.name, r.provider.Name(), alg)
	}
	if err := s.reserve(id); err != nil {
		return err
	}
	var m providers.MAC
	if r.immediate {
		m, err = openVersions(ctx, keys, alg)
	} else {
		m, err = onDevice(ctx, r.dev, func(ctx context.Context) (providers.MAC, error) {
			return openVersions(ctx, keys, alg)
		}, closeMAC)
	}
	if err != nil {
		s.release(id)
		return s.keyFailed(r, err)
	}
	return s.install(id, &macContext{mac: m, key: r, ops: r.policy.opsFor(s.peer), alg: alg, version: keys[0].n, opened: time.Now()})
}

// install puts an opened context in the place reserve made for it.
func (s *Session) install(id uint32, c *macContext) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed { // Close already gave the reservation back
		c.mac.Close()
		return providers.ErrClosed
	}
	c.lastUse = s.agent.now.Load()
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
	if n := s.caller.contexts.Add(1); n > int64(s.agent.limits.MaxContextsPerUID) {
		s.caller.contexts.Add(-1)
		return providers.Publicf(providers.ErrLimit, "too many open contexts for uid %d (at most %d)", s.peer.UID, s.agent.limits.MaxContextsPerUID)
	}
	if n := s.agent.contexts.Add(1); n > int64(s.agent.limits.MaxContexts) {
		s.uncount()
		return providers.Publicf(providers.ErrLimit, "too many open contexts in the agent (at most %d)", s.agent.limits.MaxContexts)
	}
	delete(s.ended, id)
	s.contexts[id] = nil
	return nil
}

func (s *Session) release(id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed { // else Close gave it back
		delete(s.contexts, id)
		s.uncount()
	}
}

// take returns context id for a request, marked busy until done; with
// remove it takes it out of the session instead. A context that a reload
// since it opened revoked is ended here: take frees it and returns the
// reason, and for a request that has no reply of its own (update) the
// reason waits for the context's next request.
func (s *Session) take(id uint32, remove, replies bool) (*macContext, error) {
	s.mu.Lock()
	c := s.contexts[id]
	if c == nil {
		err, ended := s.ended[id]
		if replies || !errors.Is(err, providers.ErrPermissionDenied) {
			delete(s.ended, id) // reported now
		}
		s.mu.Unlock()
		if ended {
			return nil, err
		}
		return nil, providers.Publicf(providers.ErrUnknownContext, "context %d is not open on this connection", id)
	}
	if remove {
		delete(s.contexts, id)
	} else {
		c.busy = true
	}
	key := c.key
	s.mu.Unlock()
	if remove {
		s.uncount()
	}
	if key.gen != s.agent.gen.Load() {
		r, err := s.revalidate(key, c.ops)
		if err != nil {
			if !remove {
				s.end(id, c, err, replies)
			} else {
				s.finish(c, "revoke", err)
			}
			return nil, err
		}
		s.mu.Lock() // revalidateAll reads c.key
		c.key = r
		s.mu.Unlock()
	}
	return c, nil
}

// revalidate checks a context's key and operations against the
// configuration reloaded since it opened: its name must still find the
// same key, and the peer must still have every operation it had.
// Otherwise the peer lost an operation, and the error says which way.
func (s *Session) revalidate(key *resolved, ops Ops) (*resolved, error) {
	r, err := s.agent.current(key)
	if err != nil {
		return nil, err
	}
	if lost := ops &^ r.policy.opsFor(s.peer); lost != 0 {
		return nil, providers.Publicf(providers.ErrPermissionDenied,
			"the agent's configuration changed: %s may no longer %s with key %q; the context was ended", s.peer, lost, r.name)
	}
	return r, nil
}

// end frees context id, which a request holds busy, for err. When the
// request replies, its reply says err; otherwise the context's next
// request will.
func (s *Session) end(id uint32, c *macContext, err error, replied bool) {
	s.mu.Lock()
	if s.closed || s.contexts[id] != c {
		s.mu.Unlock()
		return // Close took it meanwhile, and frees it
	}
	s.endLocked(id, c, err, replied)
}

// endLocked is end with s.mu held, which it unlocks.
func (s *Session) endLocked(id uint32, c *macContext, err error, replied bool) {
	delete(s.contexts, id)
	if !replied {
		if s.ended == nil {
			s.ended = make(map[uint32]error)
		}
		s.ended[id] = err
	}
	s.mu.Unlock()
	s.uncount()
	s.finish(c, "revoke", err)
}

// done ends a request's use of a context. A reload while the request
// ran passed over the context, busy then (see revalidateAll): it is
// checked now, with any copy the request made, so that a revoked one
// gives back its device state at once rather than at its next request or
// the idle timeout.
func (s *Session) done(c *macContext) {
	s.mu.Lock()
	c.busy = false
	c.lastUse = s.agent.now.Load()
	stale := c.key.gen != s.agent.gen.Load()
	s.mu.Unlock()
	if stale {
		s.revalidateAll()
	}
}

// keyFailed turns a provider's error into what the client sees, drops a
// key that vanished from the cache, and logs what the client does not see
// (rate-limited per provider).
func (s *Session) keyFailed(r *resolved, err error) error {
	if errors.Is(err, providers.ErrKeyNotFound) {
		s.agent.forget(r.name)
		s.agent.forgetVersions(r.ref)
		return providers.Publicf(providers.ErrKeyNotFound, "key %q not found", r.name)
	}
	if timedOut(err) {
		return err // the device's state change is logged, and the error names it
	}
	if _, ok := errors.AsType[*providers.PublicError](err); !ok {
		r.dev.warn("provider operation failed", "key", r.name, "err", err)
	}
	return r.dev.public(err)
}

// lose ends context c after a call on it passed its deadline. The call
// still running owns c's MAC and closes it when it returns.
func (s *Session) lose(c *macContext) {
	c.lost = true
	c.err = providers.Publicf(providers.ErrContextLost,
		"the context was ended: provider %q did not answer within %s", c.key.provider.Name(), c.key.dev.timeout)
}

// Update appends p to context id. b, if not nil, is a buffer p lies in,
// of which the caller holds a reference: a context that keeps its input
// (providers.Retainer) keeps p under a reference of its own rather than a
// copy, and a device call past its deadline holds one until it returns.
// An error from the provider sticks to the context; Update itself fails
// only when there is no such context.
func (s *Session) Update(ctx context.Context, id uint32, p []byte, b *frame.Buffer) error {
	c, err := s.take(id, false, false)
	if err != nil {
		if errors.Is(err, providers.ErrPermissionDenied) {
			return nil // reported by the context's next request
		}
		return err
	}
	if c.err == nil {
		if c.key.immediate {
			err = update(ctx, c.mac, p, b)
		} else {
			mac := c.mac
			p, b, done := deviceInput(p, b)
			b.Retain() // the call's
			err = c.key.dev.call(ctx, func(ctx context.Context) error {
				return update(ctx, mac, p, b)
			}, func() {
				mac.Close()
				b.Release()
			})
			releaseUnlessLate(b, err)
			done()
			if timedOut(err) {
				s.lose(c)
			}
		}
		if err != nil && !c.lost {
			c.err = s.keyFailed(c.key, err)
		}
		c.bytes += int64(len(p))
	}
	s.done(c)
	return nil
}

// update appends p to m, handing b on to a context that keeps its input.
func update(ctx context.Context, m providers.MAC, p []byte, b *frame.Buffer) error {
	if rt, ok := m.(providers.Retainer); ok && b != nil {
		return rt.UpdateRetained(ctx, p, b)
	}
	return m.Update(ctx, p)
}

// deviceInput is a device call's input, which the call may read after
// its caller has returned (past its deadline): data itself if it lies in
// b, a buffer the caller holds, else a copy in a buffer of its own (the
// caller's data may be a connection's buffer, reused or unmapped as soon
// as the reader moves on). done lets go of the copy once the caller is
// finished; it does nothing when there is none.
func deviceInput(data []byte, b *frame.Buffer) ([]byte, *frame.Buffer, func()) {
	if b != nil {
		return data, b, func() {}
	}
	c := frame.Copy(data)
	return c.Bytes(), c, c.Release
}

// lateRelease is what a device call past its deadline runs as it returns
// at last, to release its reference to b; nil when there is no b.
func lateRelease(b *frame.Buffer) func() {
	if b == nil {
		return nil
	}
	return b.Release
}

// releaseUnlessLate releases a device call's reference to b once the call
// has returned, which it has unless it passed its deadline: then the call
// releases it as it returns at last.
func releaseUnlessLate(b *frame.Buffer, err error) {
	if !timedOut(err) {
		b.Release()
	}
}

// Fail makes err context id's sticky error, unless it has one already,
// for an UPDATE the connection could not take (its uid's budget was
// spent): the context's next request that replies reports it. An unknown
// id is ignored, as an UPDATE on it would be.
func (s *Session) Fail(id uint32, err error) {
	c, terr := s.take(id, false, false)
	if terr != nil {
		return
	}
	if c.err == nil && !c.lost {
		c.err = err
	}
	s.done(c)
}

// Copy opens newID as a copy of id. It reports id's sticky error; a failed
// copy leaves id as it was.
func (s *Session) Copy(ctx context.Context, id, newID uint32) error {
	c, err := s.take(id, false, true)
	if err != nil {
		return err
	}
	defer s.done(c)
	if c.err != nil {
		return c.err
	}
	if err := s.reserve(newID); err != nil {
		return err
	}
	var m providers.MAC
	if c.key.immediate {
		m, err = c.mac.Copy(ctx)
	} else {
		src := c.mac
		m, err = onDevice(ctx, c.key.dev, src.Copy, func(m providers.MAC) {
			src.Close()
			closeMAC(m)
		})
		if timedOut(err) {
			s.lose(c)
		}
	}
	if err != nil {
		s.release(newID)
		return s.keyFailed(c.key, err)
	}
	return s.install(newID, &macContext{mac: m, key: c.key, ops: c.ops, alg: c.alg, version: c.version, bytes: c.bytes, opened: time.Now()})
}

// Finalize finishes context id and appends its tag to dst. A peer allowed
// only to verify gets ErrPermissionDenied, and the context is finished all
// the same.
func (s *Session) Finalize(ctx context.Context, id uint32, dst []byte) (tag []byte, err error) {
	tag, _, err = s.FinalizeVersion(ctx, id, dst)
	return tag, err
}

// FinalizeVersion is Finalize that also returns the key version that
// computed the tag.
func (s *Session) FinalizeVersion(ctx context.Context, id uint32, dst []byte) (tag []byte, version int, err error) {
	c, err := s.take(id, true, true)
	if err != nil {
		return nil, 0, err
	}
	defer func() { s.finishVersion(c, "finalize", err, version, false) }()
	if c.err != nil {
		return nil, 0, c.err
	}
	if err := s.agent.check(s.peer, c.key, OpMAC); err != nil {
		return nil, 0, err
	}
	var t []byte
	if c.key.immediate {
		t, err = c.mac.Finalize(ctx)
	} else {
		mac := c.mac
		t, err = onDevice(ctx, c.key.dev, mac.Finalize, func([]byte) { mac.Close() })
		c.lost = timedOut(err)
	}
	if err != nil {
		return nil, 0, s.keyFailed(c.key, err)
	}
	return append(dst, t...), c.version, nil
}

// Verify finishes context id and checks tag in constant time. Errors wrap
// ErrInvalidSignature, ErrPermissionDenied or the sticky error.
func (s *Session) Verify(ctx context.Context, id uint32, tag []byte) error {
	_, err := s.VerifyVersion(ctx, id, tag)
	return err
}

// VerifyVersion is Verify that also returns the key version the tag
// matched. A context on a plain name accepts a tag from any version
// that was live when it opened.
func (s *Session) VerifyVersion(ctx context.Context, id uint32, tag []byte) (version int, err error) {
	c, err := s.take(id, true, true)
	if err != nil {
		return 0, err
	}
	defer func() { s.finishVersion(c, "verify", err, version, version != 0 && version != c.version) }()
	if c.err != nil {
		return 0, c.err
	}
	if err := s.agent.check(s.peer, c.key, OpVerify); err != nil {
		return 0, err
	}
	if err := fullLength(tag, c.alg); err != nil {
		return 0, err
	}
	if c.key.immediate {
		err = c.mac.Verify(ctx, tag)
	} else {
		mac := c.mac
		err = c.key.dev.call(ctx, func(ctx context.Context) error { return mac.Verify(ctx, tag) }, mac.Close)
		c.lost = timedOut(err)
	}
	if err != nil {
		if errors.Is(err, providers.ErrInvalidSignature) {
			return 0, providers.ErrInvalidSignature
		}
		return 0, s.keyFailed(c.key, err)
	}
	if mm, ok := c.mac.(*multiMAC); ok {
		return mm.matched, nil
	}
	return c.version, nil
}

// finish closes a context taken out of the session and audits its use.
func (s *Session) finish(c *macContext, op string, err error) {
	s.finishVersion(c, op, err, 0, false)
}

// finishVersion is finish for a use that reached a key version; previous
// marks a verification only an older version satisfied.
func (s *Session) finishVersion(c *macContext, op string, err error, version int, previous bool) {
	if !c.lost {
		c.mac.Close()
	}
	s.agent.auditUseVersion(s.peer, op, c.key.name, c.alg, err, c.bytes, c.opened, version, previous)
}

// Abandon frees context id without a result. An unknown id is ignored:
// abandoning is idempotent.
func (s *Session) Abandon(id uint32) {
	if c, err := s.take(id, true, true); err == nil {
		s.finish(c, "abandon", nil)
	}
}

// MAC computes a whole tag in one call and appends it to dst.
func (s *Session) MAC(ctx context.Context, key []byte, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	tag, _, err := s.MACVersion(ctx, key, alg, data, nil, dst)
	return tag, err
}

// MACVersion is MAC that also returns the key version that computed the
// tag: the current one, or N for NAME@N. b, if not nil, is a buffer data
// lies in, as for StartMAC.
func (s *Session) MACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, dst []byte) ([]byte, int, error) {
	var start time.Time
	if s.agent.observed() {
		start = time.Now()
	}
	r, err := s.oneShotKey(ctx, key, alg, OpMAC)
	if err != nil {
		return nil, 0, err
	}
	vk := r.macKey()
	var tag []byte
	if r.immediate {
		tag, err = sumOne(ctx, vk, alg, data, dst)
	} else {
		// Past its deadline the call still reads its input and writes
		// its tag: neither may be the caller's memory.
		data, b, done := deviceInput(data, b)
		b.Retain() // the call's
		tag, err = onDevice(ctx, r.dev, func(ctx context.Context) ([]byte, error) {
			return sumOne(ctx, vk, alg, data, nil)
		}, func([]byte) { b.Release() })
		releaseUnlessLate(b, err)
		done()
	}
	if err != nil {
		tag, err = nil, s.keyFailed(r, err)
	}
	s.agent.auditUseVersion(s.peer, "mac", r.name, alg, err, int64(len(data)), start, vk.n, false)
	return tag, vk.n, err
}

// VerifyMAC checks tag over data in one call, in constant time: in the
// key's device when it can, else in the agent. A plain name accepts a
// tag from any live version of its key.
func (s *Session) VerifyMAC(ctx context.Context, key []byte, alg providers.Algorithm, data, tag []byte) error {
	_, err := s.VerifyMACVersion(ctx, key, alg, data, nil, tag)
	return err
}

// VerifyMACVersion is VerifyMAC that also returns the key version the
// tag matched. b is as for MACVersion.
func (s *Session) VerifyMACVersion(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, tag []byte) (int, error) {
	var start time.Time
	if s.agent.observed() {
		start = time.Now()
	}
	r, err := s.oneShotKey(ctx, key, alg, OpVerify)
	if err != nil {
		return 0, err
	}
	if err := fullLength(tag, alg); err != nil {
		s.auditVerifyMAC(r, alg, err, len(data), start, 0)
		return 0, err
	}
	var version int
	if r.immediate {
		version, err = s.verifyMAC(ctx, r, alg, data, tag)
	} else {
		if b == nil {
			tag = bytes.Clone(tag) // in the caller's memory, as data is
		}
		data, b, done := deviceInput(data, b)
		b.Retain() // the call's
		err = r.dev.call(ctx, func(ctx context.Context) error {
			var err error
			version, err = s.verifyMAC(ctx, r, alg, data, tag)
			return err
		}, lateRelease(b))
		releaseUnlessLate(b, err)
		done()
	}
	if err != nil && err != providers.ErrInvalidSignature {
		err = s.keyFailed(r, err)
	}
	if err != nil {
		version = 0
	}
	s.auditVerifyMAC(r, alg, err, len(data), start, version)
	return version, err
}

func (s *Session) auditVerifyMAC(r *resolved, alg providers.Algorithm, err error, n int, start time.Time, version int) {
	s.agent.auditUseVersion(s.peer, "verify_mac", r.name, alg, err, int64(n), start, version, version != 0 && version != r.macKey().n)
}

// verifyMAC checks a one-shot's tag against the versions r verifies with
// and returns the version it matched; its errors are ErrInvalidSignature
// or the provider's own.
func (s *Session) verifyMAC(ctx context.Context, r *resolved, alg providers.Algorithm, data, tag []byte) (int, error) {
	keys := r.verifyKeys()
	if len(keys) == 1 {
		if err := verifyOne(ctx, keys[0], alg, data, tag); err != nil {
			return 0, err
		}
		return keys[0].n, nil
	}
	return verifyVersions(ctx, keys, alg, data, tag)
}

// fullLength refuses a tag that is not alg's full length before any
// provider sees it: the agent, not a token or TPM that might compare only
// as many bytes as it was given, decides that a short tag is no match.
func fullLength(tag []byte, alg providers.Algorithm) error {
	if len(tag) != alg.Size() {
		return providers.ErrInvalidSignature
	}
	return nil
}

// StartMAC is MAC for a caller that must not wait, such as a
// connection's reader: it returns without waiting on a device, and done
// gets the tag and the key version, or the error, exactly once, on
// another goroutine (a device call's, or its deadline's), or before
// StartMAC returns for an error found at once (a denial, an algorithm
// the key lacks, a device with too many calls stuck); done must not wait
// either. data and dst are the call's until done, and past the deadline
// until the stuck call returns, which holds a reference to b, if not nil,
// the buffer data lies in. On a key not resolved yet, finding it may wait
// on a device too, so that happens on the other goroutine.
func (s *Session) StartMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, dst []byte, done func(tag []byte, version int, err error)) {
	r := s.agent.cached(key)
	if r == nil || r.immediate {
		go func() { done(s.MACVersion(ctx, key, alg, data, b, dst)) }()
		return
	}
	var start time.Time
	if s.agent.observed() {
		start = time.Now()
	}
	if err := s.allowOneShot(r, alg, OpMAC); err != nil {
		done(nil, 0, err)
		return
	}
	vk := r.macKey()
	var tag []byte // f's; read only when f returned in time
	b.Retain()     // the call's
	r.dev.startFair(ctx, func(ctx context.Context) error {
		var err error
		tag, err = sumOne(ctx, vk, alg, data, dst)
		return err
	}, func(err error) {
		releaseUnlessLate(b, err)
		var out []byte
		if err == nil {
			out = tag
		} else {
			err = s.keyFailed(r, err)
		}
		s.agent.auditUseVersion(s.peer, "mac", r.name, alg, err, int64(len(data)), start, vk.n, false)
		done(out, vk.n, err)
	}, lateRelease(b))
}

// StartVerifyMAC is VerifyMAC as StartMAC is MAC.
func (s *Session) StartVerifyMAC(ctx context.Context, key []byte, alg providers.Algorithm, data []byte, b *frame.Buffer, tag []byte, done func(version int, err error)) {
	r := s.agent.cached(key)
	if r == nil || r.immediate {
		go func() { done(s.VerifyMACVersion(ctx, key, alg, data, b, tag)) }()
		return
	}
	var start time.Time
	if s.agent.observed() {
		start = time.Now()
	}
	if err := s.allowOneShot(r, alg, OpVerify); err != nil {
		done(0, err)
		return
	}
	if err := fullLength(tag, alg); err != nil {
		s.auditVerifyMAC(r, alg, err, len(data), start, 0)
		done(0, err)
		return
	}
	var version int // f's; read only when f returned in time
	b.Retain()      // the call's
	r.dev.startFair(ctx, func(ctx context.Context) error {
		var err error
		version, err = s.verifyMAC(ctx, r, alg, data, tag)
		return err
	}, func(err error) {
		releaseUnlessLate(b, err)
		if err != nil && err != providers.ErrInvalidSignature {
			err = s.keyFailed(r, err)
		}
		v := 0
		if err == nil {
			v = version
		}
		s.auditVerifyMAC(r, alg, err, len(data), start, v)
		done(v, err)
	}, lateRelease(b))
}

// oneShotKey resolves a key for a one-shot operation and checks policy
// and algorithm; a denial is audited.
func (s *Session) oneShotKey(ctx context.Context, key []byte, alg providers.Algorithm, op Ops) (*resolved, error) {
	r, err := s.agent.lookup(ctx, s.peer, key, op)
	if err != nil {
		if errors.Is(err, providers.ErrPermissionDenied) {
			s.auditOneShotDenied(op, string(key), alg, err)
		}
		return nil, err
	}
	if err := supports(r, alg); err != nil {
		return nil, err
	}
	return r, nil
}

// allowOneShot checks policy and algorithm for a one-shot on a key
// already resolved; a denial is audited.
func (s *Session) allowOneShot(r *resolved, alg providers.Algorithm, op Ops) error {
	if err := s.agent.check(s.peer, r, op); err != nil {
		s.auditOneShotDenied(op, r.name, alg, err)
		return err
	}
	if err := r.usable(); err != nil {
		return err
	}
	return supports(r, alg)
}

func (s *Session) auditOneShotDenied(op Ops, name string, alg providers.Algorithm, err error) {
	opName := "mac"
	if op == OpVerify {
		opName = "verify_mac"
	}
	s.agent.auditUse(s.peer, opName, name, alg, err, 0, time.Time{})
}

// supports says, as the client sees it, whether r's key can do alg.
func supports(r *resolved, alg providers.Algorithm) error {
	if !r.key.Supports(alg) {
		return providers.Publicf(providers.ErrUnsupportedAlgorithm, "key %q (provider %q) cannot do %s", r.name, r.provider.Name(), alg)
	}
	return nil
}

// Contexts is how many contexts the session has open.
func (s *Session) Contexts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.contexts)
}

// IsOpen reports whether context id is open or being opened. A context
// the agent ended on its own (idle, or revoked) is not, though its next
// request is told why.
func (s *Session) IsOpen(id uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.contexts[id]
	return ok
}

// expire frees contexts idle since before cutoff (on the agent's coarse
// clock), remembering their IDs to say why later.
func (s *Session) expire(cutoff int64) {
	s.mu.Lock()
	var gone []*macContext
	for id, c := range s.contexts {
		if c == nil || c.busy || c.lastUse >= cutoff {
			continue
		}
		delete(s.contexts, id)
		if s.ended == nil {
			s.ended = make(map[uint32]error)
		}
		if len(s.ended) < maxTombstones {
			s.ended[id] = providers.Publicf(providers.ErrLimit,
				"context %d was idle for more than %s and was freed", id, s.agent.limits.IdleContextTimeout)
		}
		gone = append(gone, c)
	}
	s.mu.Unlock()
	for _, c := range gone {
		s.uncount()
		if c.key.immediate {
			s.finish(c, "expire", providers.ErrLimit)
		} else {
			// Closing a device's context may call the device; the
			// sweeper, which keeps the agent's clock, must not wait.
			go s.finish(c, "expire", providers.ErrLimit)
		}
	}
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
			s.finish(c, "abandon", nil)
		}
		s.uncount()
	}
	s.agent.sessions.Add(-1)
	s.agent.callers.leave(s.caller)
	s.agent.sessionsMu.Lock()
	delete(s.agent.live, s)
	s.agent.sessionsMu.Unlock()
}

// revalidateAll ends the contexts that a reload revoked, leaving each
// one's reason for its next request. A context that a request uses
// meanwhile is left to that request, which checks it again when it ends
// (done).
func (s *Session) revalidateAll() {
	gen := s.agent.gen.Load()
	type check struct {
		c   *macContext
		key *resolved
	}
	s.mu.Lock()
	var stale map[uint32]check
	for id, c := range s.contexts {
		if c != nil && c.key.gen != gen {
			if stale == nil {
				stale = make(map[uint32]check)
			}
			stale[id] = check{c, c.key}
		}
	}
	s.mu.Unlock()
	for id, ck := range stale {
		if _, err := s.revalidate(ck.key, ck.c.ops); err != nil {
			s.mu.Lock()
			if s.closed || s.contexts[id] != ck.c || ck.c.busy || ck.c.key != ck.key {
				s.mu.Unlock()
				continue
			}
			s.endLocked(id, ck.c, err, false)
		}
	}
}
