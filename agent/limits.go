package agent

import "time"

// Limits bound what one client can take. Past each, that client gets an
// error wrapping providers.ErrLimit and everyone else is served as before.
type Limits struct {
	// MaxContextsPerSession bounds open contexts on one connection.
	MaxContextsPerSession int
	// MaxContexts bounds open contexts in the whole agent.
	MaxContexts int
	// IdleContextTimeout frees a context nobody used for this long; the
	// next request on it says so. Negative disables it.
	IdleContextTimeout time.Duration
}

// DefaultLimits are safe for a machine serving many processes: a software
// context costs well under a kilobyte.
var DefaultLimits = Limits{
	MaxContextsPerSession: 16384,
	MaxContexts:           262144,
	IdleContextTimeout:    10 * time.Minute,
}

func (l *Limits) fill() {
	if l.MaxContextsPerSession <= 0 {
		l.MaxContextsPerSession = DefaultLimits.MaxContextsPerSession
	}
	if l.MaxContexts <= 0 {
		l.MaxContexts = DefaultLimits.MaxContexts
	}
	switch {
	case l.IdleContextTimeout == 0:
		l.IdleContextTimeout = DefaultLimits.IdleContextTimeout
	case l.IdleContextTimeout < 0:
		l.IdleContextTimeout = 0
	}
}
