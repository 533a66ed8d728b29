package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLogLimiterPerCaller checks that one caller's burst does not use up
// another's allowance, that the count of lines left out comes with the
// next line let through, and that many callers do not grow the limiter
// past its bound.
func TestLogLimiterPerCaller(t *testing.T) {
	l := newLogLimiter(5, 20)
	now := time.Unix(1_000_000, 0)
	allowed := 0
	for range 1000 {
		if ok, _ := l.allow(1001, now); ok {
			allowed++
		}
	}
	if allowed != 20 {
		t.Errorf("a caller's burst let %d lines through, want 20", allowed)
	}
	if ok, _ := l.allow(1002, now); !ok {
		t.Error("another caller was held back by the first one's burst")
	}
	now = now.Add(time.Second)
	ok, leftOut := l.allow(1001, now)
	if !ok || leftOut != 980 {
		t.Errorf("after a second: allowed %v, left out %d; want true, 980", ok, leftOut)
	}
	for uid := range uint32(3 * maxLoggedCallers) {
		l.allow(10_000+uid, now)
		now = now.Add(time.Millisecond)
	}
	if n := l.size(); n > maxLoggedCallers+1 { // the bound and the shared allowance
		t.Errorf("the limiter holds %d callers, more than its bound %d", n, maxLoggedCallers)
	}
}

// TestLogLimiterFullOfBusyCallers fills the limiter with callers that are
// all past their rate: a new caller shares one allowance rather than
// growing the map.
func TestLogLimiterFullOfBusyCallers(t *testing.T) {
	l := newLogLimiter(5, 1)
	now := time.Unix(1_000_000, 0)
	for uid := range uint32(maxLoggedCallers) {
		l.allow(uid, now)
		l.allow(uid, now) // left out: this caller now has a count waiting
	}
	if ok, _ := l.allow(maxLoggedCallers+1, now); !ok {
		t.Error("a new caller found no allowance")
	}
	if ok, _ := l.allow(maxLoggedCallers+2, now); ok {
		t.Error("a second new caller got an allowance of its own past the bound")
	}
	if n := l.size(); n != maxLoggedCallers+1 {
		t.Errorf("the limiter holds %d callers, want %d (the bound and the shared one)", n, maxLoggedCallers+1)
	}
}

// TestAgentLogWarningsLimitedPerCaller checks the agent log's side: a
// caller's failing requests write at most a burst of warnings, and the
// next one let through says how many were left out.
func TestAgentLogWarningsLimitedPerCaller(t *testing.T) {
	var buf bytes.Buffer
	a := &Agent{log: slog.New(slog.NewJSONHandler(&buf, nil)), logLimit: newLogLimiter(logLinesPerSecond, logLinesBurst)}
	peer := Peer{UID: 1001, Known: true}
	for range 1000 {
		a.warnFor(peer, "key generate failed", "key", "k")
	}
	// Let at least one line's allowance come back.
	time.Sleep(time.Second / logLinesPerSecond * 2)
	a.warnFor(peer, "key generate failed", "key", "k")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < logLinesBurst+1 || len(lines) > logLinesBurst+10 {
		t.Fatalf("%d lines for 1001 warnings of one caller", len(lines))
	}
	if !strings.Contains(lines[len(lines)-1], `"left_out":`) {
		t.Errorf("the last line does not say how many were left out: %s", lines[len(lines)-1])
	}
	if a.LogLinesLeftOut() < 900 {
		t.Errorf("counted %d lines left out", a.LogLinesLeftOut())
	}
}
