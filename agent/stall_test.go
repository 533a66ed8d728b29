//go:build cgo

package agent_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

func TestMain(m *testing.M) {
	code := m.Run()
	softhsm.Cleanup() // the tokens of every test, in one SoftHSM2 configuration
	os.Exit(code)
}

// shortTimeout is the TPM's deadline in these tests: short, so that a
// test of a stall sees requests fail at it more than once.
const shortTimeout = 1500 * time.Millisecond

// stallFor is how long swtpm is stopped.
const stallFor = 4 * time.Second

// heldUp is the time no software or PKCS#11 request may take while the
// TPM is stopped. Requests held up behind TPM calls would wait for most
// of the stall, a TPM timeout at a time (1.5 s); the bound is for
// correctness, far above what such a request takes (milliseconds at p99
// on a loaded machine) and above a loaded machine's hiccups.
const heldUp = time.Second

// tpmWithTimeout is the TPM provider with the deadline these tests want.
type tpmWithTimeout struct{ *tpm.Provider }

func (tpmWithTimeout) Timeout() time.Duration { return shortTimeout }

var _ providers.Deadliner = tpmWithTimeout{}

// faultRig is an agent with software, PKCS#11 (SoftHSM2) and TPM (swtpm)
// keys, and one client connection shared by every request, as the README
// recommends.
type faultRig struct {
	tpm     *swtpm.TPM
	agent   *agenttest.Agent
	client  *client.Client
	secret  []byte
	metrics *metrics.Metrics
}

func newFaultRig(t *testing.T) *faultRig {
	t.Helper()
	sw := swtpm.Require(t)
	tok := softhsm.Require(t, fmt.Sprintf("stall%d", time.Now().UnixNano()%1e6))
	ctx := context.Background()
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tpm.Open(ctx, tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: filepath.Join(t.TempDir(), "tpm")})
	if err != nil {
		hsm.Close()
		t.Fatal(err)
	}
	r := &faultRig{tpm: sw, secret: []byte("a key for all three providers, 32")}
	r.agent = agenttest.Start(t, agenttest.Options{
		Providers:      []providers.Provider{hsm, tpmWithTimeout{tp}},
		HealthInterval: time.Second,
	})
	for _, imp := range []struct {
		p    providers.Importer
		name string
	}{{r.agent.Soft, "soft-key"}, {hsm, "hsm-key"}, {tp, "tpm-key"}} {
		if _, err := imp.p.ImportKey(ctx, imp.name, r.secret); err != nil {
			t.Fatal(err)
		}
	}
	r.metrics = metrics.New()
	r.metrics.Watch(r.agent.Agent, r.agent.Server)
	r.client, err = client.Dial(ctx, r.agent.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.client.Close() })
	return r
}

// sample is one request's outcome.
type sample struct {
	start time.Time
	took  time.Duration
	err   error
}

// load sends one-shot MACs on key from workers goroutines over the shared
// client until stop is closed, checking every tag, and returns what each
// request did.
func (r *faultRig) load(t *testing.T, key string, workers int, stop <-chan struct{}) func() []sample {
	var (
		mu  sync.Mutex
		all []sample
		wg  sync.WaitGroup
	)
	msg := []byte("webhook body")
	m := hmac.New(sha256.New, r.secret)
	m.Write(msg)
	want := m.Sum(nil)
	for range workers {
		wg.Go(func() {
			var mine []sample
			for {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, mine...)
					mu.Unlock()
					return
				default:
				}
				start := time.Now()
				tag, err := r.client.MAC(context.Background(), key, client.SHA256, msg)
				took := time.Since(start)
				if err == nil && !hmac.Equal(tag, want) {
					err = fmt.Errorf("wrong tag %x", tag)
				}
				mine = append(mine, sample{start, took, err})
				if err != nil {
					time.Sleep(time.Millisecond) // an outage is not a reason to spin
				}
			}
		})
	}
	return func() []sample {
		wg.Wait()
		slices.SortFunc(all, func(a, b sample) int { return a.start.Compare(b.start) })
		return all
	}
}

// window returns the samples that started in [from, to).
func window(s []sample, from, to time.Time) []sample {
	var out []sample
	for _, x := range s {
		if !x.start.Before(from) && x.start.Before(to) {
			out = append(out, x)
		}
	}
	return out
}

// quantiles returns the p50 and p99 of the samples' times, the longest,
// and the first error.
func quantiles(s []sample) (p50, p99, longest time.Duration, err error) {
	d := make([]time.Duration, 0, len(s))
	for _, x := range s {
		d = append(d, x.took)
		if err == nil && x.err != nil {
			err = x.err
		}
	}
	if len(d) == 0 {
		return 0, 0, 0, err
	}
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*99/100], d[len(d)-1], err
}

// TestTPMStallHoldsUpNothingElse stops swtpm with SIGSTOP for 4 s while
// software, PKCS#11 and TPM one-shots flow on one shared connection. The
// software and PKCS#11 requests must go on completing throughout, none
// waiting a second (a correctness bound: before the fix, they waited for
// the whole stall behind a TPM call on the connection's reader); TPM requests must fail at the TPM's timeout with
// unavailable naming the provider, and succeed again once swtpm
// continues; status on another connection must answer within a second
// and say the TPM is down.
func TestTPMStallHoldsUpNothingElse(t *testing.T) {
	if testing.Short() {
		t.Skip("a 4 s stall")
	}
	r := newFaultRig(t)
	stop := make(chan struct{})
	softDone := r.load(t, "soft-key", 2, stop)
	hsmDone := r.load(t, "hsm-key", 2, stop)
	tpmDone := r.load(t, "tpm-key", 1, stop)
	stopped := false
	defer func() {
		if stopped {
			r.tpm.Continue()
		}
	}()

	quietFrom := time.Now()
	time.Sleep(time.Second)
	stallFrom := time.Now()
	if err := r.tpm.Pause(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	py := r.pythonLoad(t, stallFor-time.Second)

	// Status on a connection of its own, while the TPM is stopped.
	time.Sleep(2 * time.Second) // the TPM's first requests have passed their deadline
	sc, err := client.Dial(context.Background(), r.agent.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	statusStart := time.Now()
	st, err := sc.Status(sctx)
	statusTook := time.Since(statusStart)
	cancel()
	if err != nil {
		t.Errorf("status while the TPM is stopped: %v (after %s)", err, statusTook)
	}
	t.Logf("status while the TPM is stopped answered in %s", statusTook)
	// A metrics scrape does not wait on the TPM either.
	scrapeStart := time.Now()
	rec := httptest.NewRecorder()
	scraped := make(chan struct{})
	go func() {
		r.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		close(scraped)
	}()
	select {
	case <-scraped:
	case <-time.After(time.Second):
		t.Fatal("a metrics scrape did not answer within a second while the TPM was stopped")
	}
	t.Logf("metrics scrape while the TPM is stopped took %s", time.Since(scrapeStart))
	for _, want := range []string{
		`hmac_agent_provider_up{kind="tpm",provider="tpm"} 0`,
		`hmac_agent_provider_up{kind="pkcs11",provider="hsm"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics during the stall lack %s", want)
		}
	}
	for _, p := range st.Providers {
		t.Logf("status: %s healthy=%v error=%q down_since=%v failed_requests=%d check_age=%.1fs",
			p.Name, p.Healthy, p.Error, p.DownSince, p.FailedRequests, p.CheckAge)
		if wantHealthy := p.Name != "tpm"; p.Healthy != wantHealthy {
			t.Errorf("status: %s healthy=%v during the TPM's stall, want %v", p.Name, p.Healthy, wantHealthy)
		}
	}

	time.Sleep(time.Until(stallFrom.Add(stallFor)))
	stallTo := time.Now()
	if err := r.tpm.Continue(); err != nil {
		t.Fatal(err)
	}
	stopped = false
	// Service returns by itself: wait for a TPM success after the stall.
	var back time.Duration
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := r.client.MAC(context.Background(), "tpm-key", client.SHA256, []byte("x")); err == nil {
			back = time.Since(stallTo)
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the TPM did not serve again within 10 s of SIGCONT: %v", err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	soft, hsm, tpms := softDone(), hsmDone(), tpmDone()
	t.Logf("first TPM success %s after SIGCONT", back.Round(time.Millisecond))

	for _, c := range []struct {
		name string
		s    []sample
	}{{"software", soft}, {"PKCS#11", hsm}} {
		qp50, qp99, _, qerr := quantiles(window(c.s, quietFrom, stallFrom))
		during := window(c.s, stallFrom, stallTo)
		sp50, sp99, longest, serr := quantiles(during)
		t.Logf("%s on the shared connection: quiet p50 %s p99 %s; during the stall (%d requests) p50 %s p99 %s, longest %s",
			c.name, qp50, qp99, len(during), sp50, sp99, longest)
		if qerr != nil || serr != nil {
			t.Errorf("%s: errors: quiet %v, during the stall %v", c.name, qerr, serr)
		}
		if len(during) < 100 {
			t.Errorf("%s: only %d requests during the stall: held up", c.name, len(during))
		}
		// A request held up by a TPM call would wait for the TPM's
		// timeout at least (for the whole stall, without deadlines).
		if longest > heldUp {
			t.Errorf("%s: a request took %s during the stall: held up by the TPM", c.name, longest)
		}
		if _, _, l, _ := quantiles(window(c.s, quietFrom, stallTo)); l > heldUp {
			t.Errorf("%s: a request took %s", c.name, l)
		}
	}

	var failed, other int
	for _, x := range window(tpms, stallFrom.Add(100*time.Millisecond), stallTo) {
		switch {
		case x.err == nil:
			other++ // it may have been answered before the stop reached it
		case errors.Is(x.err, client.ErrUnavailable) && strings.Contains(x.err.Error(), `"tpm"`):
			failed++
			if x.took < shortTimeout*9/10 || x.took > shortTimeout+time.Second {
				t.Errorf("TPM request failed after %s, want about its timeout %s", x.took, shortTimeout)
			}
		default:
			t.Errorf("TPM request during the stall: %v, want unavailable naming the provider", x.err)
		}
	}
	t.Logf("TPM during the stall: %d unavailable at the timeout, %d answered", failed, other)
	py(t)
	// Sent one at a time, at least one starts and fails within the stall.
	if failed < 1 {
		t.Errorf("no TPM request failed at the timeout during a %s stall", stallFor)
	}
}

// TestTPMKilledHoldsUpNothingElse kills swtpm with SIGKILL under the same
// load, keeps it down for 2 s and starts it again on the same state. The
// software and PKCS#11 requests must go on as before; TPM requests fail
// with unavailable naming the provider meanwhile, and the TPM serves again
// by itself once swtpm is back (the provider reconnects).
func TestTPMKilledHoldsUpNothingElse(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s outage")
	}
	r := newFaultRig(t)
	stop := make(chan struct{})
	softDone := r.load(t, "soft-key", 2, stop)
	hsmDone := r.load(t, "hsm-key", 2, stop)
	tpmDone := r.load(t, "tpm-key", 1, stop)

	time.Sleep(time.Second)
	downFrom := time.Now()
	if err := r.tpm.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	downTo := time.Now()
	sw, err := swtpm.Start(r.tpm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	*r.tpm = *sw
	var back time.Duration
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := r.client.MAC(context.Background(), "tpm-key", client.SHA256, []byte("x")); err == nil {
			back = time.Since(downTo)
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the TPM did not serve again within 15 s of swtpm's restart: %v", err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	soft, hsm, tpms := softDone(), hsmDone(), tpmDone()
	t.Logf("first TPM success %s after swtpm started again", back.Round(time.Millisecond))

	for _, c := range []struct {
		name string
		s    []sample
	}{{"software", soft}, {"PKCS#11", hsm}} {
		during := window(c.s, downFrom, downTo)
		p50, p99, longest, err := quantiles(during)
		t.Logf("%s while swtpm is dead (%d requests): p50 %s p99 %s, longest %s", c.name, len(during), p50, p99, longest)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if len(during) < 100 || longest > heldUp {
			t.Errorf("%s: %d requests, longest %s, while swtpm was dead: held up", c.name, len(during), longest)
		}
	}
	var failed, answered int
	for _, x := range window(tpms, downFrom, downTo) {
		switch {
		case x.err == nil:
			answered++
		case errors.Is(x.err, client.ErrUnavailable) && strings.Contains(x.err.Error(), `"tpm"`):
			failed++
		default:
			t.Errorf("TPM request while swtpm was dead: %v, want unavailable naming the provider", x.err)
		}
	}
	t.Logf("TPM while swtpm was dead: %d unavailable, %d answered", failed, answered)
	if failed == 0 {
		t.Error("no TPM request failed while swtpm was dead")
	}
}

// pythonLoad runs testdata/stall_load.py, which sends software, PKCS#11
// and TPM one-shots through Python's default Agent (one connection) for
// d, and returns a function that waits for it and checks what it saw:
// the software and PKCS#11 requests all answered and none held up, the
// TPM's failed only as Unavailable naming the provider.
func (r *faultRig) pythonLoad(t *testing.T, d time.Duration) func(*testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and python3 is missing: %v", err)
		}
		t.Logf("python3 is missing: Python's default Agent is left out: %v", err)
		return func(*testing.T) {}
	}
	clientDir, err := filepath.Abs("../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, "testdata/stall_load.py", fmt.Sprint(d.Seconds()), string(r.secret))
	cmd.Env = append(os.Environ(), "PYTHONPATH="+clientDir, "HMAC_AGENT_SOCK="+r.agent.Path)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func(t *testing.T) {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("stall_load.py: %v\n%s", err, stderr.String())
		}
		var got map[string]struct {
			Requests          int
			P50, P99, Longest float64
			Errors            map[string]int
		}
		if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
			t.Fatalf("stall_load.py: %v: %q", err, stdout.String())
		}
		for _, key := range []string{"soft-key", "hsm-key", "tpm-key"} {
			g := got[key]
			sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)).Round(time.Microsecond) }
			t.Logf("Python default Agent, %s during the stall: %d requests, p50 %s p99 %s, longest %s, errors %v",
				key, g.Requests, sec(g.P50), sec(g.P99), sec(g.Longest), g.Errors)
			if key == "tpm-key" {
				if n := g.Errors["Unavailable"]; n == 0 || n != sumErrors(g.Errors) {
					t.Errorf("Python, TPM during the stall: errors %v, want Unavailable naming the provider", g.Errors)
				}
				continue
			}
			if g.Requests < 50 || sumErrors(g.Errors) != 0 || sec(g.Longest) > heldUp {
				t.Errorf("Python, %s during the stall: %d requests, longest %s, errors %v: held up", key, g.Requests, sec(g.Longest), g.Errors)
			}
		}
	}
}

func sumErrors(m map[string]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}
