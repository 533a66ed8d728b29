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
	held   atomic.Int64
	max    int64
	parent *Budget // charged along with this one: the agent's total
	what   string  // the limit's name, for the error
}

// NewBudget returns a budget of max bytes; max <= 0 means unbounded.
// Every charge is made to parent too, if not nil, and fails if either
// bound would be passed. what names the limit in the error.
func NewBudget(max int64, parent *Budget, what string) *Budget {
	return &Budget{max: max, parent: parent, what: what}
}

// Charge counts n more bytes held, or returns an error wrapping ErrLimit
// and counts nothing if they would pass the bound (or the parent's).
func (b *Budget) Charge(n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	if !b.reserve(int64(n), b.max, b.max > 0) {
		return Publicf(ErrLimit, "too much data held in the agent (at most %d bytes; %s)", b.max, b.what)
	}
	if err := b.parent.Charge(n); err != nil {
		b.held.Add(-int64(n))
		return err
	}
	return nil
}

// ChargeOptional is Charge for bytes the holder could do without (input
// kept only to replay for a copy): it succeeds only while the budget, and
// its parent, stay at most half spent, so that what a caller must have
// held (a frame being read, a request waiting on a device) always finds
// room.
func (b *Budget) ChargeOptional(n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	if !b.reserve(int64(n), b.max/2, b.max > 0) {
		return Publicf(ErrLimit, "too much data held in the agent for copies (at most half of %d bytes; %s)", b.max, b.what)
	}
	if err := b.parent.ChargeOptional(n); err != nil {
		b.held.Add(-int64(n))
		return err
	}
	return nil
}

// reserve adds n to what b holds if that stays within limit, when
// bounded. It never counts bytes it then refuses: a charge added first
// and taken back after made the shared total read above its bound for a
// moment, and another uid's charge in that moment failed for nothing.
func (b *Budget) reserve(n, limit int64, bounded bool) bool {
	if !bounded {
		b.held.Add(n)
		return true
	}
	for {
		v := b.held.Load()
		if v+n > limit {
			return false
		}
		if b.held.CompareAndSwap(v, v+n) {
			return true
		}
	}
}

// Release gives back n bytes charged before.
func (b *Budget) Release(n int) {
	if b != nil && n > 0 {
		b.held.Add(-int64(n))
		b.parent.Release(n)
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
