package tpm

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/hmac-agent/hmac-agent/providers"
)

var _ providers.MAC = (*mac)(nil)

// mac is a context. Input is held back until more than one command's worth
// (1024 bytes) has come: a short message is then one TPM2_HMAC, and a long
// one a sequence fed in 1024-byte commands, whose last part goes with
// TPM2_SequenceComplete.
//
// A sequence does not survive a TPM restart or a dropped connection. The
// input sent to it is kept up to maxReplay bytes, so that a cut sequence
// is made again and fed that input, and the stream goes on; a longer
// stream reports ErrContextLost instead. 64 KiB covers the messages a TPM
// key is mostly used for at a bounded cost per context, where keeping all
// of a long stream's input would cost its length in memory for an event
// as rare as a TPM restart.
type mac struct {
	p    *Provider
	k    *key
	obj  *object
	alg  providers.Algorithm
	seq  *object // nil until the input outgrows one command
	buf  []byte  // at most maxBuffer bytes not yet sent
	done bool
	// sent is the input the sequence has had, for replay; nil with
	// noReplay once it outgrew maxReplay.
	sent     []byte
	noReplay bool
	// budget is the caller's (providers.BudgetFrom at NewMAC), charged
	// for sent's capacity.
	budget  *providers.Budget
	charged int
}

// maxReplay bounds the input a context keeps to replay into a new
// sequence after its sequence was cut.
const maxReplay = 64 << 10

// NewMAC opens a context; the key must have an object for alg.
func (k *key) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	o, ok := k.objs[alg]
	if !ok {
		return nil, fmt.Errorf("tpm: key %q has no %s object: %w", k.name, alg, providers.ErrUnsupportedAlgorithm)
	}
	return &mac{p: k.p, k: k, obj: o, alg: alg, budget: providers.BudgetFrom(ctx)}, nil
}

// SumMAC computes a short message's tag with one TPM2_HMAC, a long one
// through a sequence.
func (k *key) SumMAC(ctx context.Context, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	o, ok := k.objs[alg]
	if !ok {
		return nil, fmt.Errorf("tpm: key %q has no %s object: %w", k.name, alg, providers.ErrUnsupportedAlgorithm)
	}
	if len(data) > maxBuffer {
		m := &mac{p: k.p, k: k, obj: o, alg: alg}
		defer m.Close()
		if err := m.Update(ctx, data); err != nil {
			return nil, err
		}
		tag, err := m.Finalize(ctx)
		return append(dst, tag...), err
	}
	var tag []byte
	err := k.p.run(ctx, func() error {
		if err := k.p.loadLocked(o); err != nil {
			return err
		}
		var err error
		tag, err = k.p.hmacOnce(o.handle, o.blob.Auth, data, dst, alg.Size())
		return err
	})
	if err != nil {
		return nil, k.p.failed(o, "TPM2_HMAC", err)
	}
	return tag, nil
}

// failed turns a TPM error into the contract's terms.
func (p *Provider) failed(o *object, op string, err error) error {
	if _, ok := err.(tpm2.TPMRC); ok {
		return fmt.Errorf("tpm: %s with key %s: %w: %w", op, o.label, p.refused("the TPM refused "+op), err)
	}
	return err
}

func (m *mac) Algorithm() providers.Algorithm { return m.alg }

// Update appends p, sending every full 1024 bytes but the last to the
// sequence. Each command takes the TPM's lock on its own, so a long
// stream does not keep other clients waiting.
func (m *mac) Update(ctx context.Context, p []byte) error {
	if m.done {
		return providers.ErrAlreadyFinalized
	}
	for len(m.buf)+len(p) > maxBuffer {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Fill the held-back part to a whole command and send it.
		n := maxBuffer - len(m.buf)
		chunk := p[:n]
		if len(m.buf) > 0 {
			m.buf = append(m.buf, chunk...)
			chunk = m.buf
		}
		if err := m.send(ctx, chunk); err != nil {
			m.fail()
			return err
		}
		m.buf = m.buf[:0]
		p = p[n:]
	}
	m.buf = append(m.buf, p...)
	return nil
}

// send feeds one chunk to the sequence, starting it first if need be.
func (m *mac) send(ctx context.Context, chunk []byte) error {
	err := m.p.run(ctx, func() error {
		if m.seq == nil {
			if err := m.startLocked(); err != nil {
				return err
			}
		}
		if err := m.loadSeqLocked(); err != nil {
			return err
		}
		if err := m.p.sequenceUpdate(m.seq.handle, chunk); err != nil {
			return m.p.failed(m.obj, "TPM2_SequenceUpdate", err)
		}
		return nil
	})
	if err == nil {
		m.keep(chunk)
	}
	return err
}

// keep adds chunk to the input kept for replay, until it outgrows
// maxReplay.
func (m *mac) keep(chunk []byte) {
	switch {
	case m.noReplay:
	case len(m.sent)+len(chunk) > maxReplay:
		clear(m.sent)
		m.sent, m.noReplay = nil, true
	default:
		m.sent = append(m.sent, chunk...)
	}
	m.recharge()
}

// recharge brings what the caller's budget is charged to sent's capacity.
// Replay data the budget cannot hold is dropped instead, as past
// maxReplay: the context goes on, but cannot survive a TPM restart.
func (m *mac) recharge() {
	want := cap(m.sent)
	switch {
	case want < m.charged:
		m.budget.Release(m.charged - want)
	case want > m.charged:
		if m.budget.ChargeOptional(want-m.charged) != nil {
			clear(m.sent)
			m.sent, m.noReplay = nil, true
			want = 0
			m.budget.Release(m.charged)
		}
	}
	m.charged = want
}

// loadSeqLocked loads the context's sequence. One cut by a TPM restart or
// a new connection is made again from the kept input, if it was kept.
func (m *mac) loadSeqLocked() error {
	err := m.p.loadLocked(m.seq)
	if err == nil || m.noReplay || m.seq.epoch == m.p.epoch || !errors.Is(err, providers.ErrContextLost) {
		return err
	}
	m.p.releaseLocked(m.seq)
	m.seq = nil
	if err := m.startLocked(); err != nil {
		return err
	}
	for rest := m.sent; len(rest) > 0; {
		n := min(len(rest), maxBuffer)
		if err := m.p.loadLocked(m.seq); err != nil {
			return err
		}
		if err := m.p.sequenceUpdate(m.seq.handle, rest[:n]); err != nil {
			return m.p.failed(m.obj, "TPM2_SequenceUpdate", err)
		}
		rest = rest[n:]
	}
	return m.p.loadLocked(m.seq)
}

// startLocked runs TPM2_HMAC_Start; the sequence's own auth is empty.
func (m *mac) startLocked() error {
	if err := m.p.loadLocked(m.obj); err != nil {
		return err
	}
	seq := &object{kind: objSeq, epoch: m.p.epoch, label: m.obj.label}
	err := m.p.withRoomLocked(seq, []*object{m.obj, seq}, func() error {
		rsp, err := tpm2.HmacStart{
			Handle:  tpm2.AuthHandle{Handle: m.obj.handle, Name: m.obj.name, Auth: tpm2.PasswordAuth(m.obj.blob.Auth)},
			Auth:    tpm2.TPM2BAuth{},
			HashAlg: tpm2.TPMAlgNull,
		}.Execute(m.p.t)
		if err != nil {
			return m.p.failed(m.obj, "TPM2_HMAC_Start", err)
		}
		seq.handle = rsp.SequenceHandle
		return nil
	})
	if err != nil {
		return err
	}
	m.seq = seq
	return nil
}

// fail ends a context whose sequence is gone or broken.
func (m *mac) fail() {
	m.done = true
	m.release()
}

func (m *mac) release() {
	if m.seq != nil {
		seq := m.seq
		m.seq = nil
		if m.p.turn.TryEnter(nil) {
			if !m.p.closed {
				m.p.releaseLocked(seq)
			}
			m.p.turn.Leave(nil)
		} else {
			m.p.releaseLater(seq)
		}
	}
	clear(m.buf)
	m.buf = nil
	clear(m.sent)
	m.sent = nil
	m.recharge()
}

// Copy saves the sequence's context and loads it again as an independent
// sequence; the TPM's ContextSave does not end the original.
func (m *mac) Copy(ctx context.Context) (providers.MAC, error) {
	if m.done {
		return nil, providers.ErrAlreadyFinalized
	}
	c := &mac{p: m.p, k: m.k, obj: m.obj, alg: m.alg, buf: append([]byte(nil), m.buf...),
		sent: append([]byte(nil), m.sent...), noReplay: m.noReplay, budget: m.budget}
	c.recharge()
	if m.seq == nil {
		return c, nil
	}
	err := m.p.run(ctx, func() error {
		if m.p.fresh(m.seq) != nil {
			// Cut by a restart: made again, if it can be.
			if err := m.loadSeqLocked(); err != nil {
				return err
			}
		}
		saved := m.seq.saved
		if m.seq.handle != 0 {
			rsp, err := tpm2.ContextSave{SaveHandle: m.seq.handle}.Execute(m.p.t)
			if err != nil {
				return m.p.failed(m.obj, "TPM2_ContextSave", err)
			}
			saved = &rsp.Context
		}
		c.seq = &object{kind: objSeq, saved: saved, epoch: m.p.epoch, label: m.obj.label}
		return nil
	})
	if err != nil {
		c.budget.Release(c.charged)
		return nil, err
	}
	return c, nil
}

// Finalize sends what is held back: one TPM2_HMAC for a short message,
// else TPM2_SequenceComplete, which also ends the sequence.
func (m *mac) Finalize(ctx context.Context) ([]byte, error) {
	if m.done {
		return nil, providers.ErrAlreadyFinalized
	}
	m.done = true
	defer m.release()
	if m.seq == nil {
		return m.k.SumMAC(ctx, m.alg, m.buf, nil)
	}
	var tag []byte
	err := m.p.run(ctx, func() error {
		if err := m.loadSeqLocked(); err != nil {
			return err
		}
		rsp, err := tpm2.SequenceComplete{
			SequenceHandle: tpm2.AuthHandle{Handle: m.seq.handle, Auth: tpm2.PasswordAuth(nil)},
			Buffer:         tpm2.TPM2BMaxBuffer{Buffer: m.buf},
			Hierarchy:      tpm2.TPMRHNull,
		}.Execute(m.p.t)
		if err != nil {
			return m.p.failed(m.obj, "TPM2_SequenceComplete", err)
		}
		m.p.dropLocked(m.seq) // the TPM flushed it
		m.seq.saved = nil
		if n := len(rsp.Result.Buffer); n != m.alg.Size() {
			return fmt.Errorf("tpm: TPM2_SequenceComplete gave a %d-byte digest where %d belong: %w", n, m.alg.Size(), m.p.refused("the TPM answered a malformed digest"))
		}
		tag = rsp.Result.Buffer
		return nil
	})
	return tag, err
}

// Verify finishes the context and compares in the agent, in constant time:
// a TPM HMAC key cannot verify a tag itself without revealing the tag.
func (m *mac) Verify(ctx context.Context, tag []byte) error {
	sum, err := m.Finalize(ctx)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(sum, tag) != 1 {
		return providers.ErrInvalidSignature
	}
	return nil
}

// Close abandons the context and flushes its sequence.
func (m *mac) Close() {
	if m.done && m.seq == nil {
		return
	}
	m.done = true
	m.release()
}
