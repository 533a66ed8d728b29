package main

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/socket"
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
// limits (docs/operations.md, "Sharing the agent between callers"): every
// connection with its buffers and one uncharged request, every context,
// and max_bytes of frames, requests and device input.
func worstCaseMemory(a agent.Limits, s socket.Limits) int64 {
	if s.MaxConnections <= 0 {
		s.MaxConnections = socket.DefaultLimits.MaxConnections
	}
	return int64(s.MaxConnections)*(connectionMemory+socket.RequestMemory) +
		a.MaxBytes + int64(a.MaxContexts)*contextMemory
}

// setMemoryLimit gives the Go runtime a soft memory limit of the worst
// case at these limits plus runtimeHeadroom, unless GOMEMLIMIT sets one.
// Without it the garbage collector lets the heap grow to twice what is
// live before collecting, so an agent holding its worst case would grow
// to twice that; with it the collector works harder near the limit
// instead. It is soft: the agent never fails for passing it.
func setMemoryLimit(a agent.Limits, s socket.Limits, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := worstCaseMemory(a, s) + runtimeHeadroom
	debug.SetMemoryLimit(limit)
	log.Debug("memory limit set from the limits", "bytes", limit)
}
