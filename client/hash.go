package client

import (
	"context"
	"hash"
)

// Hash adapts an HMAC to hash.Hash, for code written against that
// interface (io.Copy into it, then Sum).
//
// Write costs what Update costs: nothing waits. Sum costs two round trips
// to the agent, a Copy and a Finalize of the copy, because hash.Hash
// requires Sum to leave the state unchanged; prefer HMAC.Finalize when you
// need the tag once. Reset opens a new context (one round trip).
//
// hash.Hash has no way to return errors from Sum or Reset; they are kept
// and returned by Err, and such a Sum appends nothing, so a comparison
// with an expected tag fails rather than passes.
type Hash struct {
	ctx    context.Context
	client *Client
	key    string
	h      *HMAC
	err    error
}

var _ hash.Hash = (*Hash)(nil)

// NewHash opens a context on key and wraps it as a hash.Hash. ctx bounds
// every later call of the Hash.
func (c *Client) NewHash(ctx context.Context, key string, alg Algorithm) (*Hash, error) {
	h, err := c.New(ctx, key, alg)
	if err != nil {
		return nil, err
	}
	return &Hash{ctx: ctx, client: c, key: key, h: h}, nil
}

// Write appends p; it fails only when the connection is gone.
func (x *Hash) Write(p []byte) (int, error) {
	if x.err != nil {
		return 0, x.err
	}
	if err := x.h.Update(p); err != nil {
		x.err = err
		return 0, err
	}
	return len(p), nil
}

// Sum appends the tag of what was written so far to b. See the type's doc
// for its cost and errors.
func (x *Hash) Sum(b []byte) []byte {
	if x.err != nil {
		return b
	}
	c, err := x.h.Copy(x.ctx)
	if err != nil {
		x.err = err
		return b
	}
	tag, err := c.Finalize(x.ctx)
	if err != nil {
		x.err = err
		return b
	}
	return append(b, tag...)
}

// Reset starts over with no input.
func (x *Hash) Reset() {
	x.h.Close()
	h, err := x.client.New(x.ctx, x.key, x.h.alg)
	if err != nil {
		x.err = err
		return
	}
	x.h, x.err = h, nil
}

// Size is the tag length.
func (x *Hash) Size() int { return x.h.alg.Size() }

// BlockSize is the hash function's block size.
func (x *Hash) BlockSize() int { return x.h.alg.BlockSize() }

// Err returns the first error a Write, Sum or Reset met.
func (x *Hash) Err() error { return x.err }

// Close frees the context in the agent.
func (x *Hash) Close() error { return x.h.Close() }
