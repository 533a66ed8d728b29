package main

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/socket"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// What the agent holds per connection and per context at most beside the
// bytes charged to callers' budgets, measured on Linux amd64
// (docs/operations.md), and room for the runtime, the binary and the
// providers' libraries.
const (
	connectionMemory = 40 << 10
	contextMemory    = 1331 // 1.3 KiB
	runtimeHeadroom  = 64 << 20
)

// worstCaseMemory is what callers can make the agent hold at these
// limits with this many providers (docs/operations.md, "Sharing the agent
// between callers"): every connection with its buffers and one uncharged
// request, every context, max_bytes of frames, requests and device
// input, the frames pooled for reuse, and for each provider the calls
// past their deadline that have not returned, each holding a frame and a
// goroutine no budget counts.
func worstCaseMemory(a agent.Limits, s socket.Limits, providers int) int64 {
	if s.MaxConnections <= 0 {
		s.MaxConnections = socket.DefaultLimits.MaxConnections
	}
	if s.MaxFrame <= 0 {
		s.MaxFrame = socket.DefaultLimits.MaxFrame
	}
	s.MaxFrame = max(s.MaxFrame, wire.MinMaxFrame)
	return int64(s.MaxConnections)*(connectionMemory+socket.RequestMemory) +
		a.MaxBytes + int64(a.MaxContexts)*contextMemory + frame.PoolMax +
		int64(providers)*stuckCallsMemory(s.MaxFrame)
}

// stuckCallsMemory is what one provider's calls past their deadline hold
// at most (agent.MaxStuckCalls): each its input, at most a frame, and
// what a request holds beside its data.
func stuckCallsMemory(maxFrame int) int64 {
	return agent.MaxStuckCalls * int64(maxFrame+socket.RequestMemory)
}

// setMemoryLimit gives the Go runtime a soft memory limit of the worst
// case at these limits plus runtimeHeadroom, unless GOMEMLIMIT sets one.
// Without it the garbage collector lets the heap grow to twice what is
// live before collecting, so an agent holding its worst case would grow
// to twice that; with it the collector works harder near the limit
// instead. It is soft: the agent never fails for passing it.
func setMemoryLimit(a agent.Limits, s socket.Limits, providers int, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := worstCaseMemory(a, s, providers) + runtimeHeadroom
	debug.SetMemoryLimit(limit)
	log.Debug("memory limit set from the limits", "bytes", limit)
}
