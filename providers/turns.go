package providers

import "context"

// TurnInput is how much input a computation on the agent's own CPUs
// handles between two pauses (WithPause): a piece of it is tens of
// microseconds of hashing.
const TurnInput = 64 << 10

type pauseKey struct{}

// WithPause returns ctx carrying pause, which a long computation on the
// agent's own CPUs calls between pieces of TurnInput bytes so that other
// callers have their turn at the CPUs. The caller that holds a turn
// passes it; pause gives the turn up and waits for the next.
func WithPause(ctx context.Context, pause func()) context.Context {
	return context.WithValue(ctx, pauseKey{}, pause)
}

// PauseFrom returns the pause ctx carries, or nil.
func PauseFrom(ctx context.Context) func() {
	f, _ := ctx.Value(pauseKey{}).(func())
	return f
}
