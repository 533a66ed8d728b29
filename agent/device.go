package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// DefaultTimeout is how long the agent waits for one call into a
// provider that does not set its own (providers.Deadliner).
const DefaultTimeout = 5 * time.Second

// DefaultHealthInterval is how often each provider's health is probed
// when Options.HealthInterval is zero.
const DefaultHealthInterval = 5 * time.Second

// warnEvery is the least time between two per-request warnings about one
// provider: a device that fails every request would otherwise write a
// line per request (hundreds a second). What is left out is counted and
// the count given with the next warning.
const warnEvery = 10 * time.Second

// MaxStuckCalls bounds the calls into one provider that passed their
// deadline and have not returned. Each holds a goroutine and its
// request's data, which its caller no longer counts: the request was
// answered, and its bytes given back to the uid's budget, at the
// deadline. A device that never answers again would otherwise gather them
// without end, one per request. Past it, calls fail at once. The data is
// at most one frame (max_frame), so a provider's stuck calls hold at most
// MaxStuckCalls frames and goroutines, a row of its own in the agent's
// worst-case memory (docs/operations.md).
const MaxStuckCalls = 64

// errDeadline is what a call past its provider's timeout fails with. It
// is ErrUnavailable to every client; the agent tells it apart to end a
// context whose state the stuck call leaves unknown.
var errDeadline = fmt.Errorf("%w: no answer within the provider's timeout", providers.ErrUnavailable)

// device is the agent's view of one provider: the deadline on its calls,
// its health as last probed, whether it is down, and the limiter on its
// warnings. It is safe for concurrent use.
type device struct {
	p       providers.Provider
	timeout time.Duration
	log     *slog.Logger
	// oneShots queues one-shot calls by caller, so that a flood of them
	// from one caller costs another one turn per round.
	oneShots *scheduler

	down  atomic.Bool  // read on every call's success; mu guards changes
	stuck atomic.Int32 // calls past their deadline still running

	mu         sync.Mutex
	downSince  time.Time
	reason     string // why it is down, fit for a client
	failed     int64  // requests failed with ErrUnavailable since down
	checked    time.Time
	probeStart time.Time // of the probe running now; zero if none
	probeErr   error
	keys       int
	nextWarn   time.Time
	suppressed int
}

func newDevice(p providers.Provider, log *slog.Logger, shared func() bool) *device {
	d := &device{p: p, timeout: DefaultTimeout, log: log}
	par := 0
	if pp, ok := p.(providers.Parallel); ok {
		par = pp.Parallelism()
	}
	d.oneShots = newScheduler(par, shared)
	if dl, ok := p.(providers.Deadliner); ok && dl.Timeout() > 0 {
		d.timeout = dl.Timeout()
	}
	return d
}

// Where a call stands: its goroutine and its deadline race to move it
// from running, and whoever wins answers the caller; the other cleans up.
const (
	callRunning int32 = iota
	callFinished
	callAbandoned
	callQueued // waiting for its turn (startFair)
)

// start runs f, a call into the provider, on a goroutine of its own and
// returns at once. finish is called exactly once: with f's error if f
// returns within the provider's timeout, on f's goroutine, or else when
// the timeout passes, with an error wrapping ErrUnavailable that names the
// provider, on a timer's goroutine; or before start returns, without
// running f, when the provider has too many calls stuck already. A device call cannot be interrupted (a
// PKCS#11 library has no way to, a TPM command is in the device), so one
// past the deadline goes on in the background; late, if not nil, runs on
// its goroutine when it returns at last (or, for one abandoned while it
// waited its turn, when the turn comes), to release what it holds. Until
// then the caller must leave alone everything f uses (its input, its
// output, the context it runs on).
func (d *device) start(ctx context.Context, f func(context.Context) error, finish func(error), late func()) {
	d.launch(ctx, f, finish, late, false)
}

// startFair is start for a one-shot: the call waits for its turn in the
// device's scheduler, by caller, and its deadline counts from now, so a
// call that waits too long fails as one the device did not answer.
func (d *device) startFair(ctx context.Context, f func(context.Context) error, finish func(error), late func()) {
	d.launch(ctx, f, finish, late, true)
}

func (d *device) launch(ctx context.Context, f func(context.Context) error, finish func(error), late func(), fair bool) {
	if n := d.stuck.Load(); n >= MaxStuckCalls {
		d.failure(fmt.Sprintf("%d calls stuck", n), errDeadline, true)
		finish(providers.Publicf(providers.ErrUnavailable,
			"provider %q is not answering: %d calls have been waiting past its %s timeout", d.p.Name(), n, d.timeout))
		return
	}
	key := providers.BudgetFrom(ctx)
	// Not tied to the request's context: a connection's context is one
	// that every request on it would otherwise register with, under one
	// lock. A connection that goes away leaves its calls to their
	// deadline.
	// Nor does a device call hold the caller's turn at the CPUs: a pause
	// meant for a reader's own work (providers.WithPause) must not reach
	// it.
	ctx, cancel := context.WithTimeout(providers.WithPause(context.WithoutCancel(ctx), nil), d.timeout)
	var state atomic.Int32
	// release gives the call's turn to the next one waiting when it is
	// abandoned at its deadline, so that a stalled call holds up the
	// calls queued behind it no longer than that. (A call that returns
	// passes its turn on as its run ends, before finish.)
	var release atomic.Pointer[func()]
	if fair {
		state.Store(callQueued)
	}
	stop := context.AfterFunc(ctx, func() {
		if state.CompareAndSwap(callRunning, callAbandoned) {
			// The call may return and take itself off first; the count
			// is right again at once.
			d.stuck.Add(1)
			if r := release.Load(); r != nil {
				(*r)()
			}
			finish(d.deadlinePassed())
			return
		}
		if state.CompareAndSwap(callQueued, callAbandoned) {
			finish(d.deadlinePassed()) // it never ran, and never will
		}
	})
	run := func(rel func()) (after func()) {
		if rel != nil {
			release.Store(&rel)
			if !state.CompareAndSwap(callQueued, callRunning) {
				// Abandoned while it waited: its turn passes on as run
				// returns.
				cancel()
				if late != nil {
					late()
				}
				return nil
			}
		}
		err := f(ctx)
		if state.CompareAndSwap(callRunning, callFinished) {
			stop()
			cancel()
			d.observe(err)
			// finish once the turn has passed (scheduler.work): it
			// writes a reply, which may wait for the client.
			return func() { finish(err) }
		}
		cancel()
		d.log.Debug("a call that passed its deadline returned", "provider", d.p.Name(), "err", err)
		if late != nil {
			late()
		}
		d.stuck.Add(-1)
		return nil
	}
	if fair {
		d.oneShots.submit(key, run)
		return
	}
	go func() {
		if after := run(nil); after != nil {
			after()
		}
	}()
}

// call is start for a caller that waits: it returns what finish would get.
func (d *device) call(ctx context.Context, f func(context.Context) error, late func()) error {
	done := make(chan error, 1)
	d.start(ctx, f, func(err error) { done <- err }, late)
	return <-done
}

// onDevice is call for a call with a result. The result is read only
// once f has returned in time: past the deadline it belongs to f, and
// late gets it when f returns at last.
func onDevice[T any](ctx context.Context, d *device, f func(context.Context) (T, error), late func(T)) (T, error) {
	var out T
	err := d.call(ctx, func(ctx context.Context) error {
		var err error
		out, err = f(ctx)
		return err
	}, func() {
		if late != nil {
			late(out)
		}
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// closeMAC closes what a call past its deadline opened, if anything.
func closeMAC(m providers.MAC) {
	if m != nil {
		m.Close()
	}
}

// deadlinePassed records a call that did not return within the timeout
// and returns what its caller answers.
func (d *device) deadlinePassed() error {
	msg := fmt.Sprintf("provider %q did not answer within %s", d.p.Name(), d.timeout)
	d.failure("no answer within "+d.timeout.String(), errDeadline, true)
	return &providers.PublicError{Err: errDeadline, Msg: msg}
}

// public returns what a client may see of the provider's error: an
// ErrUnavailable names the provider, so that a client with keys in
// several knows which one is out.
func (d *device) public(err error) error {
	if !errors.Is(err, providers.ErrUnavailable) || timedOut(err) {
		return err
	}
	name := d.p.Name()
	if pe, ok := errors.AsType[*providers.PublicError](err); ok {
		if strings.Contains(pe.Msg, strconv.Quote(name)) {
			return pe
		}
		return providers.Publicf(providers.ErrUnavailable, "provider %q: %s", name, pe.Msg)
	}
	return providers.Publicf(providers.ErrUnavailable, "provider %q cannot serve now", name)
}

// timedOut reports whether err is a call past its deadline.
func timedOut(err error) bool { return errors.Is(err, errDeadline) }

// observe notes the outcome of a request's call: an ErrUnavailable is a
// failure of the device, anything else shows it answering.
func (d *device) observe(err error) {
	switch {
	case errors.Is(err, providers.ErrUnavailable):
		d.failure("requests fail: "+providers.ErrUnavailable.Error(), err, true)
	case errors.Is(err, providers.ErrContextLost), errors.Is(err, providers.ErrClosed):
		// Neither says whether the device answers now.
	default:
		d.up()
	}
}

// failure marks the device down, logging the change once with its
// reason, and counts a failed request.
func (d *device) failure(reason string, err error, request bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down.Load() {
		d.downSince = time.Now()
		d.reason = reason
		d.failed = 0
		d.down.Store(true)
		d.log.Warn("provider down", "provider", d.p.Name(), "reason", reason, "err", err)
	}
	if request {
		d.failed++
	}
}

// up marks the device up, logging the change once with how long the
// outage lasted and how many requests failed during it.
func (d *device) up() {
	if !d.down.Load() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down.Load() {
		return
	}
	d.down.Store(false)
	d.log.Info("provider up", "provider", d.p.Name(),
		"outage", time.Since(d.downSince).Round(time.Millisecond).String(), "failed_requests", d.failed)
	if d.suppressed > 0 {
		d.log.Warn("provider warnings left out", "provider", d.p.Name(), "count", d.suppressed)
		d.suppressed = 0
	}
}

// warn logs a per-request warning about the device, at most one per
// warnEvery; the next one says how many were left out meanwhile.
func (d *device) warn(msg string, args ...any) {
	now := time.Now()
	d.mu.Lock()
	if now.Before(d.nextWarn) {
		d.suppressed++
		d.mu.Unlock()
		return
	}
	d.nextWarn = now.Add(warnEvery)
	n := d.suppressed
	d.suppressed = 0
	d.mu.Unlock()
	args = append(args, "provider", d.p.Name())
	if n > 0 {
		args = append(args, "left_out_before", n)
	}
	d.log.Warn(msg, args...)
}

// probe checks the provider's health and counts its keys, on the
// prober's own goroutine: a stuck probe holds up nothing but the next
// probe, and status reads what the probes found. A probe still running
// past the timeout marks the device down.
func (d *device) probe() {
	d.mu.Lock()
	start := time.Now()
	d.probeStart = start
	d.mu.Unlock()
	stuck := time.AfterFunc(d.timeout, func() {
		d.mu.Lock()
		still := d.probeStart.Equal(start)
		d.mu.Unlock()
		if still {
			d.failure("no answer within "+d.timeout.String(), errDeadline, false)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	err := d.health(ctx)
	n := -1
	if err == nil {
		var infos []providers.KeyInfo
		if infos, err = d.p.Keys(ctx); err == nil {
			n = len(infos)
		}
	}
	cancel()
	stuck.Stop()
	d.mu.Lock()
	d.probeStart = time.Time{}
	d.checked = time.Now()
	d.probeErr = err
	if n >= 0 {
		d.keys = n
	}
	d.mu.Unlock()
	switch {
	case errors.Is(err, providers.ErrClosed): // the agent is stopping
	case err != nil:
		d.failure(healthMessage(d.p), err, false)
	default:
		d.up()
	}
}

func (d *device) health(ctx context.Context) error {
	if h, ok := d.p.(providers.HealthChecker); ok {
		return h.Health(ctx)
	}
	return nil // Keys, which the probe calls next, is the check
}

// healthMessage says what failing means for p's kind, as p describes it;
// never the device's own error text, which goes to the log.
func healthMessage(p providers.Provider) string {
	if h, ok := p.(providers.HealthDescriber); ok {
		return h.HealthMessage()
	}
	return "unavailable"
}

// status is the device's line in the agent's status, from what the
// probes and requests found; it never waits on the device.
func (d *device) status(now time.Time) ProviderStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	ps := ProviderStatus{Name: d.p.Name(), Kind: d.p.Kind(), Keys: d.keys, Healthy: !d.down.Load(), Timeout: d.timeout.Seconds()}
	if !d.checked.IsZero() {
		ps.Checked = d.checked.UTC().Truncate(time.Millisecond)
		ps.CheckAge = now.Sub(d.checked).Seconds()
	}
	if !d.probeStart.IsZero() && now.Sub(d.probeStart) >= d.timeout {
		ps.Healthy = false
		ps.Error = "no answer within " + d.timeout.String()
		if !d.down.Load() {
			ps.DownSince = d.probeStart.UTC().Truncate(time.Millisecond)
		}
	}
	if d.down.Load() {
		ps.DownSince = d.downSince.UTC().Truncate(time.Millisecond)
		if ps.Error == "" {
			ps.Error = d.reason
		}
		ps.FailedRequests = d.failed
	}
	return ps
}

// keysChanged adjusts the key count after a key was created (+1) or
// deleted (-1) through the agent, so status need not wait for the next
// probe to show it.
func (d *device) keysChanged(n int) {
	d.mu.Lock()
	d.keys = max(d.keys+n, 0)
	d.mu.Unlock()
}

// healthy reports the device's state as status does, without building
// the whole line.
func (d *device) healthy(now time.Time) bool {
	if d.down.Load() {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.probeStart.IsZero() || now.Sub(d.probeStart) < d.timeout
}

// watch probes the device every interval until stop is closed; first is
// closed after the first probe.
func (d *device) watch(interval time.Duration, stop <-chan struct{}, first chan<- struct{}) {
	d.probe()
	close(first)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			select {
			case <-stop: // both ready: no probe after Close
				return
			default:
			}
			d.probe()
		}
	}
}
