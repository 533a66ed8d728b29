package tpm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/hmac-agent/hmac-agent/internal/fair"
	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Config opens a TPM.
type Config struct {
	// Name is the provider's name in the agent.
	Name string
	// Device is "/dev/tpmrm0" (or /dev/tpm0), "unix:/path/to/socket" or
	// "tcp:host:port" for swtpm.
	Device string
	// StateDir holds the key blobs; it must be private to the agent.
	StateDir string
	// Slots is how many objects the TPM can hold loaded (default 3).
	Slots int
	// Timeout bounds each command (default DefaultTimeout). A command
	// past it fails with ErrUnavailable and the connection is dropped.
	Timeout time.Duration
}

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 5 * time.Second

// hashes maps algorithms to TPM hash algorithm IDs: every hash of the TCG
// algorithm registry a keyedHash HMAC key can use that the agent also
// knows. Which the TPM has is asked with TPM2_GetCapability, never
// assumed. The TCG defines no MD5 or BLAKE2 for TPM 2.0.
var hashes = map[providers.Algorithm]tpm2.TPMAlgID{
	providers.SHA1:     tpm2.TPMAlgSHA1,
	providers.SHA256:   tpm2.TPMAlgSHA256,
	providers.SHA384:   tpm2.TPMAlgSHA384,
	providers.SHA512:   tpm2.TPMAlgSHA512,
	providers.SHA3_256: tpm2.TPMAlgSHA3256,
	providers.SHA3_384: tpm2.TPMAlgSHA3384,
	providers.SHA3_512: tpm2.TPMAlgSHA3512,
	providers.SM3:      tpm2.TPMAlgSM3256,
}

// Provider is a TPM. Create it with [Open].
type Provider struct {
	cfg     Config
	keysDir string
	algs    []providers.Algorithm

	// turn is the one owner of the TPM: every command runs in it (the
	// methods named ...Locked assume it is held). Callers wait for it by
	// caller in turn, not first come (fair.Gate), and give up when their
	// call's context ends: a caller streaming to many sequences costs
	// another caller one command's wait, and a command stuck behind a
	// stalled one fails at its own deadline.
	turn   *fair.Gate
	t      *transport
	epoch  uint64 // counts connections; older handles and contexts are gone
	closed bool
	cmdBuf [maxCommand]byte
	slots  int
	loaded []*object // objects in the TPM now, least recently used first
	clock  uint64
	srk    *object
	srkPub *tpm2.TPMTPublic

	keysMu sync.RWMutex
	keys   map[string]*key // the current version of each key
	// versions are the versions looked up so far, by NAME@N.
	versions map[string]*key
	// rotateMu serializes the provider's changes to versions.
	rotateMu sync.Mutex

	// pending are sequences to flush at the next command (releaseLater).
	pendingMu sync.Mutex
	pending   []*object

	// swaps counts slot swaps, for status and metrics: atomic, so that
	// reading it never waits for a TPM command that holds mu.
	swaps atomic.Uint64
	// retryAt: after a command timed out, commands fail at once until
	// then rather than each waiting out the timeout on a stalled TPM.
	retryAt time.Time
}

var (
	_ providers.Provider  = (*Provider)(nil)
	_ providers.Generator = (*Provider)(nil)
	_ providers.Importer  = (*Provider)(nil)
	_ providers.Deleter   = (*Provider)(nil)
	_ providers.Deadliner = (*Provider)(nil)
	_ providers.Versioner = (*Provider)(nil)
)

// Open connects to the TPM, starts it if needed, flushes transient objects
// left by an earlier user, derives the storage key and reads the key blobs.
func Open(ctx context.Context, cfg Config) (*Provider, error) {
	if cfg.Slots <= 0 {
		cfg.Slots = 3
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	// Neither the state directory nor its keys directory may be a
	// symbolic link or reachable through parents others may change.
	stateDir, err := privfile.CheckDir(cfg.StateDir, privfile.PrivateDir)
	if err != nil {
		return nil, fmt.Errorf("tpm: state directory: %w", err)
	}
	keysDir, err := privfile.CheckDir(filepath.Join(stateDir, "keys"), privfile.PrivateDir)
	if err != nil {
		return nil, fmt.Errorf("tpm: state directory: %w", err)
	}
	p := &Provider{cfg: cfg, keysDir: keysDir, slots: cfg.Slots, keys: map[string]*key{}, versions: map[string]*key{}}
	p.srk = &object{kind: objSRK}
	p.turn = fair.NewGate(1, 1)
	p.turn.Enter(nil)
	err = p.connectLocked()
	if err == nil {
		err = p.readAlgorithmsLocked()
	}
	if err == nil {
		err = p.loadLocked(p.srk)
	}
	p.turn.Leave(nil)
	if err != nil {
		p.Close()
		return nil, err
	}
	if err := p.readKeys(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// connectLocked (re)opens the connection and starts the TPM. Everything
// loaded before belongs to an older epoch from here on.
func (p *Provider) connectLocked() error {
	if p.t != nil {
		p.t.Close()
		p.t = nil
	}
	t, err := dial(p.cfg.Device, p.cfg.Timeout)
	if err != nil {
		return fmt.Errorf("%w: %w", providers.ErrUnavailable, err)
	}
	p.t = t
	p.epoch++
	p.loaded = nil
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(t); err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
		p.disconnectLocked()
		return fmt.Errorf("tpm: startup: %w: %w", providers.ErrUnavailable, err)
	}
	if err := p.flushLeftoversLocked(); err != nil {
		p.disconnectLocked()
		return err
	}
	return nil
}

// disconnectLocked drops the connection; the next command dials anew.
func (p *Provider) disconnectLocked() {
	if p.t != nil {
		p.t.Close()
		p.t = nil
	}
	p.loaded = nil
}

// flushLeftoversLocked flushes transient objects nobody owns: they survive
// a client's disconnect and would take the TPM's few slots.
func (p *Provider) flushLeftoversLocked() error {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 64}.Execute(p.t)
	if err != nil {
		return fmt.Errorf("tpm: list handles: %w", err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return err
	}
	for _, h := range hs.Handle {
		tpm2.FlushContext{FlushHandle: h}.Execute(p.t)
	}
	return nil
}

func (p *Provider) readAlgorithmsLocked() error {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapAlgs, Property: 0, PropertyCount: 256}.Execute(p.t)
	if err != nil {
		return fmt.Errorf("tpm: list algorithms: %w", err)
	}
	list, err := rsp.CapabilityData.Data.Algorithms()
	if err != nil {
		return err
	}
	have := map[tpm2.TPMAlgID]bool{}
	for _, a := range list.AlgProperties {
		have[a.Alg] = true
	}
	for _, alg := range providers.Algorithms() {
		if id, ok := hashes[alg]; ok && have[id] {
			p.algs = append(p.algs, alg)
		}
	}
	if len(p.algs) == 0 {
		return errors.New("tpm: the TPM reports no hash HMAC can use")
	}
	return nil
}

// Name returns the provider's configured name.
func (p *Provider) Name() string { return p.cfg.Name }

// Kind returns "tpm".
func (p *Provider) Kind() string { return "tpm" }

// Algorithms lists the hashes the TPM has.
func (p *Provider) Algorithms() []providers.Algorithm { return p.algs }

// Timeout is how long one command may take before it fails with
// ErrUnavailable.
func (p *Provider) Timeout() time.Duration { return p.cfg.Timeout }

// Parallelism is 1: the TPM runs one command at a time.
func (p *Provider) Parallelism() int { return 1 }

// Swaps is how many objects were swapped out of the TPM to make room.
func (p *Provider) Swaps() uint64 { return p.swaps.Load() }

// Stats reports the slot swaps for metrics.
func (p *Provider) Stats() []providers.Stat {
	return []providers.Stat{{Name: "tpm_slot_swaps_total", Help: "TPM object slots swapped out and in.", Counter: true, Value: p.Swaps()}}
}

// HealthMessage is what a failed health probe means for a TPM.
func (p *Provider) HealthMessage() string { return "the TPM does not answer" }

var (
	_ providers.HealthChecker   = (*Provider)(nil)
	_ providers.HealthDescriber = (*Provider)(nil)
	_ providers.StatsReporter   = (*Provider)(nil)
)

// exchange sends a hand-marshalled command; run reconnects if the
// connection broke.
func (p *Provider) exchange(cmd []byte) ([]byte, error) {
	rsp, err := p.t.exchange(cmd)
	if err != nil {
		return nil, err
	}
	return rsp, responseCode(rsp)
}

// run runs f with the TPM, retrying once on a new connection if the old
// one broke (objects then reload from their blobs; sequences are lost).
// A command that timed out is not retried: the TPM is stalled, and
// another try would only double the wait. Errors of the connection wrap
// ErrUnavailable with a message naming the provider.
func (p *Provider) run(ctx context.Context, f func() error) error {
	caller := providers.BudgetFrom(ctx)
	if err := p.turn.EnterContext(ctx, caller); err != nil {
		return p.unavailable(fmt.Errorf("%w: %w (the call ended waiting for its turn: %w)", errTransport, errTimeout, err))
	}
	defer p.turn.Leave(caller)
	return p.runLocked(f)
}

func (p *Provider) runLocked(f func() error) error {
	if p.closed {
		return fmt.Errorf("tpm: %w", providers.ErrClosed)
	}
	p.releasePendingLocked()
	if p.t == nil {
		if time.Now().Before(p.retryAt) {
			return p.unavailable(fmt.Errorf("%w: %w (waiting before the next try)", errTransport, errTimeout))
		}
		if err := p.connectLocked(); err != nil {
			return p.brokenLocked(err)
		}
	}
	err := f()
	if errors.Is(err, errTransport) && !errors.Is(err, errTimeout) {
		p.disconnectLocked()
		if err := p.connectLocked(); err != nil {
			return p.brokenLocked(err)
		}
		err = f()
	}
	if errors.Is(err, errTransport) {
		return p.brokenLocked(err)
	}
	return err
}

// brokenLocked drops a connection that failed with err and returns the
// error for the caller.
func (p *Provider) brokenLocked(err error) error {
	p.disconnectLocked()
	if errors.Is(err, errTimeout) {
		p.retryAt = time.Now().Add(min(p.cfg.Timeout/4, time.Second))
	}
	return p.unavailable(err)
}

// unavailable wraps a failure to reach the TPM in a message a client may
// see, naming the provider but nothing of the device.
func (p *Provider) unavailable(err error) error {
	msg := "the TPM cannot be reached"
	if errors.Is(err, errTimeout) {
		msg = fmt.Sprintf("the TPM did not answer within %s", p.cfg.Timeout)
	}
	return fmt.Errorf("tpm: %s: %w: %w", p.cfg.Device, providers.Publicf(providers.ErrUnavailable, "provider %q is unavailable: %s", p.cfg.Name, msg), err)
}

// refused is ErrUnavailable for a command the TPM answered with an error,
// in a message a client may see: it names the provider and what failed,
// never the TPM's return code.
func (p *Provider) refused(what string) error {
	return providers.Publicf(providers.ErrUnavailable, "provider %q is unavailable: %s", p.cfg.Name, what)
}

// Health checks that the TPM answers. It waits for a command in flight at
// most the provider's timeout (or until ctx ends), and its own command is
// bounded by the timeout too.
func (p *Provider) Health(ctx context.Context) error {
	wait, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	err := p.turn.EnterContext(wait, healthCheck)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("tpm: health: %w: %w", providers.ErrUnavailable, ctx.Err())
		}
		return p.unavailable(fmt.Errorf("%w: %w (commands before the check held the TPM)", errTransport, errTimeout))
	}
	defer p.turn.Leave(healthCheck)
	return p.runLocked(func() error {
		_, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTFamilyIndicator), PropertyCount: 1}.Execute(p.t)
		return err
	})
}

// healthCheck is the health check's own line at the TPM's turn, beside
// the callers'.
var healthCheck = new(struct{ byte })

// releaseLater flushes seq at the next command, for a context that ends
// while another command holds the TPM: waiting for the turn there would
// hold a call that passed its deadline until the command before it ends.
func (p *Provider) releaseLater(seq *object) {
	p.pendingMu.Lock()
	p.pending = append(p.pending, seq)
	p.pendingMu.Unlock()
}

// releasePendingLocked flushes the sequences releaseLater left.
func (p *Provider) releasePendingLocked() {
	p.pendingMu.Lock()
	pending := p.pending
	p.pending = nil
	p.pendingMu.Unlock()
	for _, o := range pending {
		p.releaseLocked(o)
	}
}

// Close flushes what the provider loaded and closes the connection.
func (p *Provider) Close() error {
	p.turn.Enter(nil)
	if p.closed {
		p.turn.Leave(nil)
		return nil
	}
	p.closed = true
	if p.t != nil {
		for _, o := range p.loaded {
			tpm2.FlushContext{FlushHandle: o.handle}.Execute(p.t)
		}
		p.loaded = nil
		p.t.Close()
	}
	// Keys are destroyed out of the turn: a key being created holds
	// keysMu while it waits for the turn, and finds the provider closed
	// once it has it.
	p.turn.Leave(nil)
	p.keysMu.Lock()
	for _, k := range p.keys {
		k.destroy()
	}
	for _, k := range p.versions {
		k.destroy()
	}
	p.keysMu.Unlock()
	return nil
}
