package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// HMAC is one HMAC computation in the agent, with pyca/cryptography's
// semantics. It is not safe for concurrent use.
//
// After Finalize or Verify, whatever they returned, every method returns
// ErrAlreadyFinalized. Close an HMAC you abandon, so the agent can free
// it; closing the Client frees them all.
type HMAC struct {
	conn *conn
	id   uint32
	alg  Algorithm
	done bool
	// version is the key version that made or matched the tag.
	version int
}

// New opens a context on the named key. It waits for the agent, so a
// missing key, a forbidden one or an algorithm its provider cannot do is
// reported here: ErrKeyNotFound, ErrPermissionDenied,
// ErrUnsupportedAlgorithm.
func (c *Client) New(ctx context.Context, key string, alg Algorithm) (*HMAC, error) {
	if len(key) > wire.MaxKeyName {
		return nil, fmt.Errorf("%w: key %q not found", ErrKeyNotFound, key)
	}
	// The context ID is per connection; pick it once the connection is
	// known, and again if send had to redial.
	var h *HMAC
	m := wire.Message{Type: wire.TypeOpen, Algorithm: uint8(alg), Key: []byte(key)}
	for attempt := 0; ; attempt++ {
		cn, err := c.current(ctx)
		if err != nil {
			return nil, err
		}
		h = &HMAC{conn: cn, id: cn.nextContext.Add(1), alg: alg}
		m.Context = h.id
		r, err := cn.roundTrip(ctx, &m)
		// An OPEN left unanswered opened nothing that outlives its
		// connection, so it is sent again as a request that was never sent.
		if _, notSent := errors.AsType[*notSentError](err); (notSent || unanswered(err)) && attempt == 0 {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = r.result(wire.TypeOK)
		r.release()
		if err != nil {
			return nil, err
		}
		break
	}
	return h, nil
}

// Algorithm is the context's algorithm.
func (h *HMAC) Algorithm() Algorithm { return h.alg }

// Size is the length of the tag Finalize returns.
func (h *HMAC) Size() int { return h.alg.Size() }

func (h *HMAC) lost() error {
	if err := h.conn.broken(); err != nil {
		return fmt.Errorf("%w: %v", ErrContextLost, err)
	}
	return nil
}

// Update appends data. It does not wait for the agent: an error the agent
// meets is reported by the next Copy, Finalize or Verify. Update returns
// an error only for a finished context or a broken connection. It does not
// retain data.
func (h *HMAC) Update(data []byte) error {
	if h.done {
		return ErrAlreadyFinalized
	}
	if err := h.lost(); err != nil {
		return err
	}
	chunk := h.conn.maxFrame - 5 - 4
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), chunk)
		var hdr [wire.HeaderSize + 4]byte
		b := wire.AppendHeader(hdr[:0], wire.TypeUpdate, 0, 4+n)
		b = binary.BigEndian.AppendUint32(b, h.id)
		if err := h.conn.writeData(false, b, data[:n]); err != nil {
			return fmt.Errorf("%w: %v", ErrContextLost, err)
		}
		data = data[n:]
	}
	return nil
}

// Copy returns an independent context in the same state. It reports an
// error from an earlier Update; the original stays usable if only the
// copy fails.
func (h *HMAC) Copy(ctx context.Context) (*HMAC, error) {
	if h.done {
		return nil, ErrAlreadyFinalized
	}
	if err := h.lost(); err != nil {
		return nil, err
	}
	c := &HMAC{conn: h.conn, id: h.conn.nextContext.Add(1), alg: h.alg}
	m := wire.Message{Type: wire.TypeCopy, Context: h.id, NewContext: c.id}
	if err := h.expect(ctx, &m, wire.TypeOK, nil); err != nil {
		return nil, err
	}
	return c, nil
}

// Finalize returns the full-length tag and finishes the context.
func (h *HMAC) Finalize(ctx context.Context) ([]byte, error) {
	if h.done {
		return nil, ErrAlreadyFinalized
	}
	h.done = true
	if err := h.lost(); err != nil {
		return nil, err
	}
	var tag []byte
	m := wire.Message{Type: wire.TypeFinalize, Context: h.id}
	err := h.expect(ctx, &m, wire.TypeTag, func(r *call) { tag = append([]byte(nil), r.body...) })
	if err == nil {
		err = checkTag(tag, h.alg)
	}
	if err != nil {
		return nil, err
	}
	return tag, nil
}

// KeyVersion is the version of the key that made the tag Finalize
// returned, or that matched the tag Verify accepted: the key's current
// version when the context was opened, or N for a key named NAME@N. It
// is 0 before then, and with an agent too old to say.
func (h *HMAC) KeyVersion() int { return h.version }

// Verify finishes the context and checks tag in the agent, in constant
// time. A wrong tag, or one of any other length than the digest, is
// ErrInvalidSignature.
func (h *HMAC) Verify(ctx context.Context, tag []byte) error {
	if h.done {
		return ErrAlreadyFinalized
	}
	h.done = true
	if err := h.lost(); err != nil {
		return err
	}
	m := wire.Message{Type: wire.TypeVerify, Context: h.id, Tag: tag}
	return h.expect(ctx, &m, wire.TypeOK, nil)
}

// Close abandons the context; the agent frees it. It does not wait and is
// idempotent; after it every method returns ErrAlreadyFinalized.
func (h *HMAC) Close() error {
	if h.done {
		return nil
	}
	h.done = true
	if h.lost() != nil {
		return nil // the agent freed it with the connection
	}
	m := wire.Message{Type: wire.TypeClose, Context: h.id}
	return h.conn.write(false, m.Append)
}

func (h *HMAC) expect(ctx context.Context, m *wire.Message, want wire.Type, body func(*call)) error {
	r, err := h.conn.roundTrip(ctx, m)
	if err != nil {
		// The agent may or may not have run the request: the context's
		// state is unknown.
		return fmt.Errorf("%w: %w", ErrContextLost, err)
	}
	defer r.release()
	if err := r.result(want); err != nil {
		return err
	}
	h.version = int(r.version)
	if body != nil {
		body(r)
	}
	return nil
}
