package main

import (
	"errors"
	"os/exec"
	"testing"
	"time"
)

// TestSettleUnreadIsNotBack: an agent whose figures cannot be read after
// an attack (it died, or its metrics stopped answering) is not reported
// back at its start: zeros read as less than any start.
func TestSettleUnreadIsNotBack(t *testing.T) {
	start := processFigures{rssMiB: 20, goroutines: 30, fds: 12}

	// The agent gone: its /proc entry with it.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	gone := func(scrape bool) (processFigures, error) {
		url := ""
		if scrape {
			url = "http://127.0.0.1:1/metrics"
		}
		return readProcess(cmd.Process.Pid, url)
	}
	if f, err := settle(gone, start, 300*time.Millisecond); err == nil {
		t.Errorf("a process gone settled with %+v and no error", f)
	}

	// /proc read, the metrics refused: the goroutines are unknown.
	noMetrics := func(scrape bool) (processFigures, error) {
		f := processFigures{rssMiB: 20, fds: 12}
		if scrape {
			return f, errors.New("connection refused")
		}
		return f, nil
	}
	if f, err := settle(noMetrics, start, 300*time.Millisecond); err == nil {
		t.Errorf("unread goroutines settled with %+v and no error", f)
	}
}
