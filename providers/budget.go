package providers

import (
	"context"
	"sync/atomic"
)

// Budget bounds the bytes one caller (one uid) makes the agent keep on
// its behalf: requests queued for a device, input a context buffers or
// keeps to replay for a copy, a frame being read. Everything held for a
// caller is charged to its budget and given back when let go, so a caller
// at its bound gets ErrLimit while every other caller is served as
// before.
//
// The agent puts a caller's budget in the context.Context of every call
// it makes for that caller ([WithBudget]); a provider that keeps a
// caller's bytes finds it with [BudgetFrom] once, when a context opens,
// and charges it as it keeps them. A nil *Budget charges nothing, so a
// provider used without an agent needs no special case.
//
// A Budget is safe for concurrent use.
type Budget struct {
	held atomic.Int64
	max  int64
}

// NewBudget returns a budget of max bytes; max <= 0 means unbounded.
func NewBudget(max int64) *Budget { return &Budget{max: max} }

// Charge counts n more bytes held, or returns an error wrapping ErrLimit
// and counts nothing if they would pass the bound.
func (b *Budget) Charge(n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	if v := b.held.Add(int64(n)); b.max > 0 && v > b.max {
		b.held.Add(-int64(n))
		return Publicf(ErrLimit, "this caller holds too much data in the agent (at most %d bytes; limits.max_bytes_per_uid)", b.max)
	}
	return nil
}

// Release gives back n bytes charged before.
func (b *Budget) Release(n int) {
	if b != nil && n > 0 {
		b.held.Add(-int64(n))
	}
}

// Held is the bytes charged now.
func (b *Budget) Held() int64 {
	if b == nil {
		return 0
	}
	return b.held.Load()
}

// Max is the bound; 0 is none.
func (b *Budget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.max
}

type budgetKey struct{}

// WithBudget returns ctx carrying b, for the calls made for b's caller.
func WithBudget(ctx context.Context, b *Budget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b)
}

// BudgetFrom returns the budget ctx carries, or nil.
func BudgetFrom(ctx context.Context) *Budget {
	b, _ := ctx.Value(budgetKey{}).(*Budget)
	return b
}
