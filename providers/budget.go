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
// # The reserved share
//
// A caller's budget has the agent's total as its parent. Callers are
// bounded one by one, but a few of them at their bounds could fill the
// total, first come, first served, and lock everyone else out. So the
// last 1/[ReservedShare] of a budget is kept for its light children: a
// charge made through a child is taken there only if that child holds,
// after it, at most 1/[LightHolding] of the parent (and never less than
// [MinLightHolding] bytes: an ordinary large request fits). A child
// holding more gets ErrLimit once the rest is spent, however small its
// steps, while a caller holding little is still served. The total still
// never passes its bound.
//
// Heavy children never reach the reserve: since the total was last
// within its shared part, every charge it took came from a child light
// after it (any other was refused), and such a child holds at most a
// light child's bytes until it charges again. So what the total holds
// past its shared part is never more than those light children hold, and
// at least (max/ReservedShare)/light of them (8 at the agent's defaults)
// must each hold their most before a light caller is refused.
//
// A Budget is safe for concurrent use.
type Budget struct {
	held   atomic.Int64
	max    int64
	parent *Budget // charged along with this one: the agent's total
	what   string  // the limit's name, for the error
	// shared is the part of max any child may fill; light is the most a
	// child may hold, after a charge, to charge past it.
	shared, light int64
}

// ReservedShare and LightHolding make a budget's reserve for light
// children: the last max/ReservedShare bytes of a budget of max bytes are
// charged through a child only while that child holds, after the charge,
// at most the larger of max/LightHolding and MinLightHolding bytes. At
// the agent's default max_bytes of 256 MiB that is the last 32 MiB, for
// uids holding at most 4 MiB. MinLightHolding is four times the default
// largest frame, 1 MiB: a frame being read, in a reused buffer of up to
// twice its size, and the request it makes (its data and 5 KiB), all
// charged for a moment, fit a light caller.
const (
	ReservedShare   = 8
	LightHolding    = 64
	MinLightHolding = 4 << 20
)

// NewBudget returns a budget of max bytes; max <= 0 means unbounded.
// Every charge is made to parent too, if not nil, and fails if either
// bound would be passed, or if it would take parent past its shared part
// while this budget holds more than a light child may (see "The reserved
// share"). Charges made to a budget directly, not through a child, may
// take all of it. what names the limit in the error.
func NewBudget(max int64, parent *Budget, what string) *Budget {
	b := &Budget{max: max, parent: parent, what: what}
	if max > 0 {
		b.shared = max - max/ReservedShare
		b.light = max / LightHolding
		if b.light < MinLightHolding {
			b.light = MinLightHolding
		}
	}
	return b
}

// Charge counts n more bytes held, or returns an error wrapping ErrLimit
// and counts nothing if they would pass the bound (or the parent's, or
// the parent's shared part while this budget is not light).
func (b *Budget) Charge(n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	return b.charge(int64(n), -1)
}

// charge is Charge made through a child that holds childHeld bytes
// after it, or directly when childHeld < 0. A child's charge past b's
// shared part is refused while the child holds more than b.light.
func (b *Budget) charge(n, childHeld int64) error {
	limit := b.max
	reserved := childHeld > b.light && b.shared < b.max
	if reserved {
		limit = b.shared
	}
	held, ok := b.reserve(n, limit)
	if !ok {
		if reserved {
			return Publicf(ErrLimit, "too much data held in the agent (at most %d bytes, the last %d of them only for callers holding at most %d; %s)",
				b.max, b.max-b.shared, b.light, b.what)
		}
		return Publicf(ErrLimit, "too much data held in the agent (at most %d bytes; %s)", b.max, b.what)
	}
	if b.parent == nil {
		return nil
	}
	// Until the parent answers, b reads n high: only its own caller's
	// charges can see it, never another's.
	if err := b.parent.charge(n, held); err != nil {
		b.held.Add(-n)
		return err
	}
	return nil
}

// ChargeOptional is Charge for bytes the holder could do without (input
// kept only to replay for a copy, or buffered only until a PKCS#11
// context may stream): it succeeds only while the budget, and
// its parent, stay at most half spent, so that what a caller must have
// held (a frame being read, a request waiting on a device) always finds
// room. Half of a budget is within its shared part: the reserve for light
// children is never touched by optional bytes.
func (b *Budget) ChargeOptional(n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	if _, ok := b.reserve(int64(n), b.max/2); !ok {
		return Publicf(ErrLimit, "too much data held in the agent for copies (at most half of %d bytes; %s)", b.max, b.what)
	}
	if err := b.parent.ChargeOptional(n); err != nil {
		b.held.Add(-int64(n))
		return err
	}
	return nil
}

// reserve adds n to what b holds if that stays within limit, when b is
// bounded at all, and returns what b holds after. It never counts bytes it then
// refuses: a charge added first and taken back after made the shared
// total read above its bound for a moment, and another uid's charge in
// that moment failed for nothing.
func (b *Budget) reserve(n, limit int64) (int64, bool) {
	if b.max <= 0 {
		return b.held.Add(n), true
	}
	for {
		v := b.held.Load()
		if v+n > limit {
			return v, false
		}
		if b.held.CompareAndSwap(v, v+n) {
			return v + n, true
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
