package metrics_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
)

const denialChildEnv = "HMAC_AGENT_DENIAL_CHILD"

func ci() bool { return os.Getenv("CI") != "" }

// denialChild is the hostile caller: it sends DENIAL_COUNT requests the
// agent must deny, each naming a key never named before, from several
// goroutines on one connection, and prints how many were not denied.
func denialChild() {
	ctx := context.Background()
	n, _ := strconv.Atoi(os.Getenv("DENIAL_COUNT"))
	c, err := client.Dial(ctx, os.Getenv("DENIAL_SOCK"))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	const workers = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	notDenied := 0
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				name := randomName()
				var err error
				switch i % 3 {
				case 0:
					_, err = c.GenerateKey(ctx, "", name, 0)
				case 1:
					err = c.DeleteKey(ctx, "", name)
				default:
					_, err = c.MAC(ctx, name, client.SHA256, nil)
				}
				if !errors.Is(err, client.ErrPermissionDenied) {
					mu.Lock()
					notDenied++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	fmt.Println("not denied:", notDenied)
	os.Exit(0)
}

func randomName() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "guess-" + hex.EncodeToString(b)
}

// rss is the process's resident set and its live heap in bytes, after a
// collection, so that garbage waiting to be freed is not counted as
// growth.
func rss(t *testing.T) (rss, heap int64) {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap = int64(ms.HeapAlloc)
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, heap
		}
	}
	t.Fatal("no VmRSS")
	return 0, 0
}

// countingWriter counts lines and keeps the audit lines that carry a
// left_out count.
type countingWriter struct {
	mu      sync.Mutex
	lines   int
	leftOut int64
}

func (w *countingWriter) counts() (lines int, leftOut int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lines, w.leftOut
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		w.lines++
		var l struct {
			LeftOut int64 `json:"left_out"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			w.leftOut += l.LeftOut
		}
	}
	return len(p), nil
}

// TestDenialsWithRandomNamesGrowNothing has another uid send 200,000
// requests the agent denies (GENERATE_KEY, DELETE_KEY and MAC), each
// naming a key never seen before, and checks that the metrics page keeps
// the same series, that the process's memory does not grow with the
// names, and that the audit log writes the denials at the per-caller rate
// with the count of those left out.
func TestDenialsWithRandomNamesGrowNothing(t *testing.T) {
	agenttest.RequireRoot(t, "to run a caller as another uid")
	denials := 200_000
	if testing.Short() {
		denials = 20_000
	}
	const sockGroup, attacker = 2001, 1001
	dir, self := agenttest.TestBinaryForOthers(t, "hmac-agent-denials-")

	audit := &countingWriter{}
	m := metrics.New()
	a := agenttest.Start(t, agenttest.Options{
		Observe: m.Observe,
		Audit:   slog.New(slog.NewJSONHandler(audit, nil)),
	})
	m.Watch(a.Agent, a.Server)
	path := filepath.Join(dir, "run", "agent.sock")
	a.Listen(t, path, sockGroup)

	// Warm up: one use, so the families that exist at all exist before.
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a.Soft.ImportKey(context.Background(), "k", []byte("k"))
	c.MAC(context.Background(), "k", client.SHA256, nil)

	run := func(n int) {
		cmd := agenttest.ChildCommand(self, &syscall.Credential{Uid: attacker, Gid: attacker, Groups: []uint32{sockGroup}},
			denialChildEnv+"=1", "DENIAL_SOCK="+path, "DENIAL_COUNT="+strconv.Itoa(n))
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("hostile caller: %v: %s", err, out)
		}
		if !strings.Contains(string(out), "not denied: 0") {
			t.Fatalf("hostile caller: %s", out)
		}
	}
	run(300) // the denial families exist from here on
	pageBefore := scrape(t, m)
	seriesBefore := countSeries(parse(t, pageBefore))
	rssBefore, heapBefore := rss(t)
	linesBefore, _ := audit.counts()

	run(denials)

	pageAfter := scrape(t, m)
	seriesAfter := countSeries(parse(t, pageAfter))
	rssAfter, heapAfter := rss(t)
	lines, leftOut := audit.counts()
	logged := lines - linesBefore
	t.Logf("%d denials: series %d -> %d, page %d -> %d bytes, live heap %d -> %d KiB, RSS %d -> %d KiB, audit lines %d (%d left out)",
		denials, seriesBefore, seriesAfter, len(pageBefore), len(pageAfter), heapBefore>>10, heapAfter>>10, rssBefore>>10, rssAfter>>10, logged, leftOut)
	if seriesAfter != seriesBefore {
		t.Errorf("series grew from %d to %d", seriesBefore, seriesAfter)
	}
	// The page differs only in the digits of its values.
	if len(pageAfter) > len(pageBefore)+4096 {
		t.Errorf("metrics page grew from %d to %d bytes", len(pageBefore), len(pageAfter))
	}
	// Before names were kept out of series, 200,000 names took about
	// 400 MB, 2 KB a name. What the denials leave behind must not be
	// counted in names: the live heap stays within a few MiB. RSS also
	// holds the race detector's shadow memory and pages the runtime has
	// not returned, so its bound is looser.
	if grew := heapAfter - heapBefore; grew > 4<<20 {
		t.Errorf("live heap grew by %d KiB", grew>>10)
	}
	if grew := rssAfter - rssBefore; grew > 128<<20 {
		t.Errorf("RSS grew by %d MiB", grew>>20)
	}
	if logged >= denials/10 {
		t.Errorf("%d audit lines for %d denials from one caller", logged, denials)
	}
	if leftOut == 0 {
		t.Error("no audit line says how many denials were left out")
	}
	if a.Agent.LogLinesLeftOut() == 0 {
		t.Error("the agent counts no lines left out")
	}
}

func countSeries(fams map[string]*dto.MetricFamily) int {
	n := 0
	for _, f := range fams {
		n += len(f.GetMetric())
	}
	return n
}
