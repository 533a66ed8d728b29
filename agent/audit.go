package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// The audit log has one JSON line per use of a key (a one-shot MAC or
// verification, a context finished, abandoned or expired) and per denial,
// written through log/slog. Fields:
//
//	time, msg="key use" or "denied", key, operation, algorithm,
//	uid, gid, pid, unit (or cgroup when there is no unit), container,
//	exe, result ("ok" or an error name), bytes, duration (ns), version
//
// version is the key version that computed the tag, or that a verified
// tag matched; previous=true marks a verification that only a version
// other than the current one satisfied. The agent's own rotations and
// retirements are lines with operation "rotate" or "retire", uid 0 and
// pid 0.
//
// unit, cgroup and exe are "unknown" when the caller's identity could not
// be read (see docs/security.md); container appears only when there is
// one.
//
// It never holds key bytes, tags or message data.
//
// Lines for denials and failures are limited per caller uid (see
// loglimit.go); the first line let through after some were left out
// carries their number as left_out.

// Use is one use of a key, or a denial, as the audit log and metrics see
// it.
type Use struct {
	Peer      Peer
	Operation string
	Key       string
	Algorithm providers.Algorithm // 0 when there is none
	Err       error
	Bytes     int64
	Duration  time.Duration // 0 when not measured
	// Version is the key version used, 0 when none was (an error, a
	// denial).
	Version int
	// Previous is set for a verification satisfied by a version other
	// than the current one.
	Previous bool
	// Registered says Key is in the agent's registry: a configured key
	// or one a provider holds. Any other name is the caller's own
	// choosing, and nothing that keeps state per name may keep it.
	Registered bool
}

// registered reports whether name is a configured key or one a
// provider was found to hold.
func (a *Agent) registered(name string) bool {
	if a.cached([]byte(name)) != nil {
		return true
	}
	a.mu.RLock()
	_, ok := a.keys[name]
	a.mu.RUnlock()
	return ok
}

// observed reports whether anyone records key uses, so callers can skip
// reading the clock when nobody does.
func (a *Agent) observed() bool { return a.audit != nil || a.observe != nil }

// auditUse records a use of a key. It costs one check when neither the
// audit log nor an observer is on.
func (a *Agent) auditUse(peer Peer, op, key string, alg providers.Algorithm, err error, bytes int64, start time.Time) {
	a.auditUseVersion(peer, op, key, alg, err, bytes, start, 0, false)
}

// auditUseVersion is auditUse for a use of a known key version.
func (a *Agent) auditUseVersion(peer Peer, op, key string, alg providers.Algorithm, err error, bytes int64, start time.Time, version int, previous bool) {
	if !a.observed() {
		return
	}
	var d time.Duration
	if !start.IsZero() {
		d = time.Since(start)
	}
	if a.observe != nil {
		// A key used without error was resolved, so only a failure asks.
		reg := err == nil || a.registered(key)
		a.observe(Use{Peer: peer, Operation: op, Key: key, Algorithm: alg, Err: err, Bytes: bytes, Duration: d, Version: version, Previous: previous, Registered: reg})
	}
	if a.audit == nil {
		return
	}
	var leftOut uint64
	if err != nil {
		var ok bool
		if ok, leftOut = a.auditLimit.allow(peer.UID, time.Now()); !ok {
			a.leftOut.Add(1)
			return
		}
	}
	msg := "key use"
	level := slog.LevelInfo
	if providers.ErrorName(err) == "permission_denied" {
		msg, level = "denied", slog.LevelWarn
	}
	result := providers.ErrorName(err)
	if result == "" {
		result = "error"
	}
	attrs := []slog.Attr{
		slog.String("key", key),
		slog.String("operation", op),
		slog.Uint64("uid", uint64(peer.UID)),
		slog.Uint64("gid", uint64(peer.GID)),
		slog.Int64("pid", int64(peer.PID)),
	}
	attrs = appendIdentity(attrs, peer.Identity)
	attrs = append(attrs,
		slog.String("result", result),
		slog.Int64("bytes", bytes),
	)
	if alg.Valid() {
		attrs = append(attrs, slog.String("algorithm", alg.String()))
	}
	if d > 0 {
		attrs = append(attrs, slog.Duration("duration", d))
	}
	if leftOut > 0 {
		attrs = append(attrs, slog.Uint64("left_out", leftOut))
	}
	if version > 0 {
		attrs = append(attrs, slog.Int("version", version))
	}
	if previous {
		attrs = append(attrs, slog.Bool("previous", true))
	}
	a.audit.LogAttrs(context.Background(), level, msg, attrs...)
}

// appendIdentity adds the caller's unit (or cgroup), container and
// executable to an audit line.
func appendIdentity(attrs []slog.Attr, id *Identity) []slog.Attr {
	const unknown = "unknown"
	if id == nil {
		return append(attrs, slog.String("unit", unknown), slog.String("exe", unknown))
	}
	switch {
	case id.Unit != "":
		attrs = append(attrs, slog.String("unit", id.Unit))
	case id.Cgroup != "":
		attrs = append(attrs, slog.String("cgroup", id.Cgroup))
	default:
		attrs = append(attrs, slog.String("unit", unknown))
	}
	if id.Container != "" {
		attrs = append(attrs, slog.String("container", id.Container))
	}
	exe := id.Executable
	if exe == "" {
		exe = unknown
	}
	attrs = append(attrs, slog.String("exe", exe))
	if id.DigestRefused != "" {
		attrs = append(attrs, slog.String("digest", id.DigestRefused))
	}
	return attrs
}

// LogLinesLeftOut counts the denial and error lines the per-caller limits
// left out of the audit and agent logs since the agent started.
func (a *Agent) LogLinesLeftOut() uint64 { return a.leftOut.Load() }

// warnFor writes a warning a caller's request caused to the agent's log,
// within that caller's rate; the next line let through says how many were
// left out meanwhile.
func (a *Agent) warnFor(peer Peer, msg string, args ...any) {
	ok, leftOut := a.logLimit.allow(peer.UID, time.Now())
	if !ok {
		a.leftOut.Add(1)
		return
	}
	if leftOut > 0 {
		args = append(args, "left_out", leftOut)
	}
	a.log.Warn(msg, args...)
}
