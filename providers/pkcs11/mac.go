//go:build cgo

package pkcs11

import (
	"context"
	"crypto/subtle"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

var (
	_ providers.MAC             = (*mac)(nil)
	_ providers.Retainer        = (*mac)(nil)
	_ providers.OneShot         = (*key)(nil)
	_ providers.OneShotVerifier = (*key)(nil)
)

// mac is a context. Until its input passes the buffer size it holds no
// session: buf collects the input and Finalize signs it with one C_Sign.
// Past that, it holds sess, on which a C_SignInit operation is active.
type mac struct {
	k    *key
	alg  providers.Algorithm
	mech uint

	buf inputBuffer
	// replay is input to feed a new operation before buf: a copy's
	// inherited input, when too long to buffer.
	replay [][]byte
	sess   *session
	// log keeps the input for Copy; nil once it outgrew MaxCopyBytes.
	log     *logRef
	dropped int64 // input length when the log was dropped
	done    bool
	// budget is the caller's (providers.BudgetFrom at NewMAC). bufCharged
	// is what buf is charged to it, logCharged what log is: the log is
	// kept only while the budget has room to spare (ChargeOptional), the
	// buffer must be.
	budget     *providers.Budget
	bufCharged int
	logCharged int
	// reserved is whether the pool let the context keep a session
	// (pool.reserveStream), from the update that outgrew the buffer to
	// the end.
	reserved bool
}

// NewMAC opens a context. It fails with ErrUnsupportedAlgorithm if the
// token lacks the mechanism or the key cannot do alg.
func (k *key) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	if !k.algs[alg] {
		return nil, fmt.Errorf("pkcs11: key %q: %w: %s", k.name, providers.ErrUnsupportedAlgorithm, alg)
	}
	m := &mac{k: k, alg: alg, mech: k.p.mech[alg], budget: providers.BudgetFrom(ctx)}
	if k.p.cfg.MaxCopyBytes > 0 {
		m.log = newLogRef()
	}
	return m, nil
}

func (m *mac) Algorithm() providers.Algorithm { return m.alg }

func (m *mac) mechanism() []*p11.Mechanism {
	return []*p11.Mechanism{p11.NewMechanism(m.mech, nil)}
}

// Update appends p. Input beyond the buffer takes a session and streams
// into the token from then on.
func (m *mac) Update(ctx context.Context, p []byte) error {
	return m.update(ctx, p, nil)
}

// UpdateRetained is Update where the log for Copy keeps p itself: the
// copy Update would make costs a streaming token as much as its hashing.
func (m *mac) UpdateRetained(ctx context.Context, p []byte, b *frame.Buffer) error {
	return m.update(ctx, p, b)
}

// update appends p; b, if not nil, holds p, and the log keeps a
// reference to it rather than a copy of p.
func (m *mac) update(ctx context.Context, p []byte, b *frame.Buffer) error {
	if m.done {
		return providers.ErrAlreadyFinalized
	}
	buffer := m.sess == nil && !m.streams(len(p))
	if buffer {
		// Past the buffer, a context its caller may not stream yet
		// buffers only while the caller's budget spares it
		// (ChargeOptional), so that what the caller must have held (the
		// frames it sends, its requests in line) still finds room; then
		// it waits for a share of the sessions.
		overflow := len(m.buf.bytes())+len(p) > m.k.p.cfg.BufferBytes
		if err := m.charge(p, true, overflow); err != nil {
			if !overflow {
				return err
			}
			if err := m.k.p.pool.awaitStream(ctx, m.budget); err != nil {
				return err
			}
			m.reserved, buffer = true, false
		}
	}
	if !buffer && m.sess == nil {
		// The buffer stays charged until the token has taken it.
		if err := m.start(ctx); err != nil {
			m.releaseStream()
			return err
		}
	}
	if !buffer {
		m.charge(p, false, false) // only gives back what the buffer held
	}
	m.logInput(p, b)
	if buffer {
		m.buf.append(p, m.k.p.cfg.BufferBytes)
		return nil
	}
	return m.call(func(s *session) error { return m.k.p.ctx.SignUpdate(s.h, p) })
}

// streams reports whether a context that holds no session starts
// streaming with n more bytes of input: once they would outgrow the
// buffer, if the pool lets its caller keep one more session. If not, the
// context goes on buffering in memory, charged to its caller, and asks
// again at its next update.
func (m *mac) streams(n int) bool {
	if len(m.buf.bytes())+n <= m.k.p.cfg.BufferBytes {
		return false
	}
	if !m.reserved {
		m.reserved = m.k.p.pool.reserveStream(m.budget)
	}
	return m.reserved
}

// releaseStream gives back the pool's leave to keep a session, once the
// context holds none and will not.
func (m *mac) releaseStream() {
	if m.reserved {
		m.k.p.pool.releaseStream(m.budget)
		m.reserved = false
	}
}

// charge counts p against the caller's budget before buf keeps it, if
// buffer: the bytes buf will hold after p, less what it holds now, as
// bytes the caller could do without if optional. It fails, keeping
// nothing, with an error wrapping ErrLimit.
func (m *mac) charge(p []byte, buffer, optional bool) error {
	want := 0
	if buffer {
		want = held(len(m.buf.bytes()) + len(p))
	}
	if want <= m.bufCharged {
		m.budget.Release(m.bufCharged - want)
		m.bufCharged = want
		return nil
	}
	charge := m.budget.Charge
	if optional {
		charge = m.budget.ChargeOptional
	}
	if err := charge(want - m.bufCharged); err != nil {
		return err
	}
	m.bufCharged = want
	return nil
}

// uncharge gives back what buf was charged, once it is let go.
func (m *mac) uncharge() {
	m.budget.Release(m.bufCharged)
	m.bufCharged = 0
}

// logInput logs input for Copy, until the cap: p itself if b holds it
// (with a reference to b), else a copy.
func (m *mac) logInput(p []byte, b *frame.Buffer) {
	if m.log == nil {
		m.dropped += int64(len(p))
		return
	}
	// A copy of the log's own takes whole pages when mapped
	// (frame.Copy); a caller's buffer that the log keeps is charged by
	// what it holds, which for a pooled frame may be twice its bytes.
	charge := frame.CopySize(len(p))
	if b != nil {
		charge = b.Size()
	}
	if int64(m.log.n+len(p)) > m.k.p.cfg.MaxCopyBytes || m.budget.ChargeOptional(charge) != nil {
		// Past max_copy_bytes, or past what the caller's budget spares
		// for copies: the context goes on, and cannot be copied.
		m.dropped = int64(m.log.n + len(p))
		m.dropLog()
		return
	}
	m.logCharged += charge
	if b == nil {
		// The log's own copy, off the Go heap when large (frame.Copy);
		// the log holds its one reference.
		b = frame.Copy(p)
		m.log.append(b.Bytes(), b)
		return
	}
	m.log.append(p, b.Retain())
}

// dropLog lets go of the input kept for Copy.
func (m *mac) dropLog() {
	if m.log != nil {
		m.log.release()
		m.log = nil
	}
	m.budget.Release(m.logCharged)
	m.logCharged = 0
}

// start takes a session, starts a sign operation and feeds it the buffer.
func (m *mac) start(ctx context.Context) error {
	s, err := m.k.p.attempt(ctx, true, func(s *session) error {
		err := m.signInit(s)
		for _, c := range m.replay {
			if err != nil {
				break
			}
			err = m.k.p.ctx.SignUpdate(s.h, c)
		}
		if err == nil && len(m.buf.bytes()) > 0 {
			err = m.k.p.ctx.SignUpdate(s.h, m.buf.bytes())
		}
		if err != nil {
			m.cancel(s) // the session goes back to the pool
		}
		return err
	})
	if err != nil {
		return m.k.gone(m.failed("start", err))
	}
	m.sess, m.replay = s, nil
	m.buf.free()
	return nil
}

func (m *mac) signInit(s *session) error {
	h, done, err := m.k.objectHandle(s)
	if err != nil {
		return err
	}
	defer done()
	return m.k.p.ctx.SignInit(s.h, m.mechanism(), h)
}

// cancel ends whatever operation may be active on s, so the session can
// go back to the pool. A session where that fails is closed by put.
func (m *mac) cancel(s *session) {
	m.k.p.ctx.SignFinal(s.h)
}

// call runs f on the context's session. If the session broke, the
// operation is gone with it: the context is lost.
func (m *mac) call(f func(s *session) error) error {
	p := m.k.p
	if err := p.enter(); err != nil {
		return err
	}
	defer p.leave()
	if p.pool.stale(m.sess) {
		// The module was re-initialized: the operation is gone, and the
		// handle may now be another session's.
		m.sess = nil
		m.done = true
		m.dropLog()
		m.uncharge()
		m.releaseStream()
		return fmt.Errorf("pkcs11: key %q: %w: the token was re-initialized", m.k.name, providers.ErrContextLost)
	}
	err := f(m.sess)
	if err != nil {
		m.releaseSession(err)
		m.done = true
		m.dropLog()
		m.uncharge()
		m.releaseStream()
		if notLoggedIn(err) {
			p.login()
		}
		p.checkToken(err) // a token gone starts its recovery
		return m.failed("update", err)
	}
	return nil
}

func (m *mac) failed(op string, err error) error {
	if sessionBroken(err) || notLoggedIn(err) {
		return fmt.Errorf("pkcs11: key %q: %s: %w: the token session was lost (%w)", m.k.name, op, providers.ErrContextLost, err)
	}
	if rv(err) != 0 {
		return classify(fmt.Sprintf("key %q: %s", m.k.name, op), err)
	}
	return err
}

func (m *mac) releaseSession(err error) {
	if m.sess != nil {
		if (err == nil || !sessionBroken(err)) && !m.k.p.pool.stale(m.sess) {
			m.cancel(m.sess)
		}
		m.k.p.pool.put(m.sess, err)
		m.sess = nil
	}
}

// Copy returns an independent context. The token cannot clone an
// operation, so the copy replays the input kept so far: at once if the
// original streams, else when it outgrows the buffer itself.
func (m *mac) Copy(ctx context.Context) (providers.MAC, error) {
	if m.done {
		return nil, providers.ErrAlreadyFinalized
	}
	if m.log == nil {
		return nil, providers.Publicf(providers.ErrLimit,
			"cannot copy: the context has had %d bytes of input and only %d are kept for copies (max_copy_bytes; less while its caller holds much in the agent)",
			m.dropped, m.k.p.cfg.MaxCopyBytes)
	}
	c := &mac{k: m.k, alg: m.alg, mech: m.mech, log: m.log.fork(), budget: m.budget}
	// The copy's log and buffer are charged as if it held them alone.
	if c.budget.ChargeOptional(m.log.n) == nil {
		c.logCharged = m.log.n
	}
	input := m.log.chunks()
	if c.logCharged == 0 && m.log.n > 0 {
		c.dropped = int64(m.log.n)
		defer c.dropLog() // the input is read from m's view
	}
	if !c.streams(m.log.n) {
		if err := c.budget.Charge(held(m.log.n)); err != nil {
			c.dropLog()
			return nil, err
		}
		c.bufCharged = held(m.log.n)
		for _, chunk := range input {
			c.buf.append(chunk, m.k.p.cfg.BufferBytes)
		}
		return c, nil
	}
	if m.sess != nil && !m.k.p.noOpState.Load() {
		ok, err := c.cloneState(ctx, m)
		if err != nil {
			c.dropLog()
			c.uncharge()
			c.releaseStream()
			return nil, err
		}
		if ok {
			return c, nil
		}
	}
	c.replay = input
	if err := c.start(ctx); err != nil {
		c.dropLog()
		c.uncharge()
		c.releaseStream()
		return nil, err
	}
	return c, nil
}

// cloneState copies m's operation into c with C_GetOperationState and
// C_SetOperationState, on tokens that can; it reports false when the token
// cannot, which it remembers, so that Copy replays instead.
func (c *mac) cloneState(ctx context.Context, m *mac) (bool, error) {
	p := m.k.p
	if err := p.enter(); err != nil {
		return false, err
	}
	defer p.leave()
	if p.pool.stale(m.sess) {
		return false, nil // replay will do
	}
	state, err := p.ctx.GetOperationState(m.sess.h)
	if err != nil {
		switch rv(err) {
		case p11.CKR_FUNCTION_NOT_SUPPORTED, p11.CKR_STATE_UNSAVEABLE, p11.CKR_OPERATION_NOT_INITIALIZED:
			p.noOpState.Store(true)
		}
		return false, nil
	}
	s, err := p.pool.get(ctx)
	if err != nil {
		return false, err
	}
	h, done, err := c.k.objectHandle(s)
	if err == nil {
		err = p.ctx.SetOperationState(s.h, state, 0, h)
		done()
	}
	if err != nil {
		p.pool.put(s, err)
		return false, nil // replay will do
	}
	c.sess = s
	return true, nil
}

// Finalize signs: one C_Sign of the buffer, or C_SignFinal when streaming.
func (m *mac) Finalize(ctx context.Context) ([]byte, error) {
	if m.done {
		return nil, providers.ErrAlreadyFinalized
	}
	m.done = true
	m.dropLog()
	defer m.uncharge()
	defer m.releaseStream()
	if m.sess != nil {
		var tag []byte
		err := m.call(func(s *session) error {
			var err error
			tag, err = m.k.p.ctx.SignFinal(s.h)
			return err
		})
		if err == nil {
			m.k.p.pool.put(m.sess, nil) // SignFinal ended the operation
			m.sess = nil
		}
		return tag, err
	}
	tag, err := m.k.sign(ctx, m.mech, m.buf.bytes())
	m.buf.free()
	return tag, err
}

// Verify checks tag inside the token with C_VerifyInit and C_Verify when
// the input was buffered. A context that streams has a sign operation
// active, which cannot turn into a verify: its tag is compared here, in
// constant time.
func (m *mac) Verify(ctx context.Context, tag []byte) error {
	if m.done {
		return providers.ErrAlreadyFinalized
	}
	if m.sess != nil {
		sum, err := m.Finalize(ctx)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(sum, tag) != 1 {
			return providers.ErrInvalidSignature
		}
		return nil
	}
	m.done = true
	m.dropLog()
	err := m.k.VerifyMAC(ctx, m.alg, m.buf.bytes(), tag)
	m.buf.free()
	m.uncharge()
	m.releaseStream()
	return err
}

// Close abandons the context and gives its session back.
func (m *mac) Close() {
	if m.done && m.sess == nil {
		return
	}
	m.done = true
	m.dropLog()
	m.replay = nil
	m.buf.free()
	m.uncharge()
	if m.sess != nil {
		if m.k.p.enter() == nil {
			m.releaseSession(nil)
			m.k.p.leave()
		}
		m.sess = nil
	}
	m.releaseStream()
}

// sign computes a whole tag with one C_SignInit and C_Sign.
func (k *key) sign(ctx context.Context, mech uint, data []byte) ([]byte, error) {
	var tag []byte
	err := k.p.withSession(ctx, func(s *session) error {
		h, done, err := k.objectHandle(s)
		if err != nil {
			return err
		}
		defer done()
		if err := k.p.ctx.SignInit(s.h, []*p11.Mechanism{p11.NewMechanism(mech, nil)}, h); err != nil {
			return err
		}
		tag, err = k.p.ctx.Sign(s.h, data)
		return err
	})
	if err != nil && rv(err) != 0 {
		err = classify(fmt.Sprintf("key %q: sign", k.name), err)
	}
	return tag, k.gone(err)
}

// SumMAC is the one-shot MAC: one session, C_SignInit and C_Sign.
func (k *key) SumMAC(ctx context.Context, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	if !k.algs[alg] {
		return nil, fmt.Errorf("pkcs11: key %q: %w: %s", k.name, providers.ErrUnsupportedAlgorithm, alg)
	}
	tag, err := k.sign(ctx, k.p.mech[alg], data)
	if err != nil {
		return nil, err
	}
	return append(dst, tag...), nil
}

// VerifyMAC checks a tag inside the token: C_VerifyInit and C_Verify. A
// tag of the wrong length is refused without asking the token.
func (k *key) VerifyMAC(ctx context.Context, alg providers.Algorithm, data, tag []byte) error {
	if !k.algs[alg] {
		return fmt.Errorf("pkcs11: key %q: %w: %s", k.name, providers.ErrUnsupportedAlgorithm, alg)
	}
	if len(tag) != alg.Size() {
		return providers.ErrInvalidSignature
	}
	mech := []*p11.Mechanism{p11.NewMechanism(k.p.mech[alg], nil)}
	err := k.p.withSession(ctx, func(s *session) error {
		h, done, err := k.objectHandle(s)
		if err != nil {
			return err
		}
		defer done()
		if err := k.p.ctx.VerifyInit(s.h, mech, h); err != nil {
			return err
		}
		return k.p.ctx.Verify(s.h, data, tag)
	})
	switch {
	case err == nil:
		return nil
	case signatureRejected(err):
		return providers.ErrInvalidSignature
	case rv(err) != 0:
		return k.gone(classify(fmt.Sprintf("key %q: verify", k.name), err))
	}
	return k.gone(err)
}
