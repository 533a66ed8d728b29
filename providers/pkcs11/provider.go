//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// mechanisms maps algorithms to HMAC mechanisms. Which the token has is
// asked with C_GetMechanismList, never assumed. There is no standard
// mechanism for HMAC-BLAKE2s or HMAC-SM3 (SM3 exists only as vendor
// mechanisms). PKCS#11 3.0's CKM_BLAKE2B_512_HMAC is left out until a
// token that has it can be tested: SoftHSM2 has none.
var mechanisms = map[providers.Algorithm]uint{
	providers.SHA1:       p11.CKM_SHA_1_HMAC,
	providers.SHA224:     p11.CKM_SHA224_HMAC,
	providers.SHA256:     p11.CKM_SHA256_HMAC,
	providers.SHA384:     p11.CKM_SHA384_HMAC,
	providers.SHA512:     p11.CKM_SHA512_HMAC,
	providers.SHA512_224: p11.CKM_SHA512_224_HMAC,
	providers.SHA512_256: p11.CKM_SHA512_256_HMAC,
	providers.SHA3_224:   p11.CKM_SHA3_224_HMAC,
	providers.SHA3_256:   p11.CKM_SHA3_256_HMAC,
	providers.SHA3_384:   p11.CKM_SHA3_384_HMAC,
	providers.SHA3_512:   p11.CKM_SHA3_512_HMAC,
	providers.MD5:        p11.CKM_MD5_HMAC,
}

// Provider is a PKCS#11 token. Create it with [Open].
type Provider struct {
	cfg  Config
	mod  *module
	ctx  *p11.Ctx
	slot uint

	algs []providers.Algorithm // the token's HMAC mechanisms
	mech map[providers.Algorithm]uint

	// closed is set by Close, with mod.calls held exclusively; every
	// call into the module holds mod.calls shared (enter).
	closed bool
	// down is set while the token is gone (recovery.go).
	down   atomic.Bool
	health health

	pool *pool

	loginMu sync.Mutex
	// gen counts logins; object handles found under an older login are
	// looked up again.
	gen atomic.Uint64
	// logins counts calls to C_Login, for tests.
	logins atomic.Int64
	// rejectedPIN is the SHA-256 of the PIN the token last rejected,
	// which is not tried again; guarded by loginMu.
	rejectedPIN *[sha256.Size]byte

	// cache holds the keys looked up, their handles and session copies
	// (cache.go).
	cache objectCache

	// noOpState is set once the token says it cannot save operation
	// state; Copy then always replays.
	noOpState atomic.Bool
}

var (
	_ providers.Provider  = (*Provider)(nil)
	_ providers.Generator = (*Provider)(nil)
	_ providers.Importer  = (*Provider)(nil)
	_ providers.Deleter   = (*Provider)(nil)
	_ providers.Deadliner = (*Provider)(nil)
	_ providers.Versioner = (*Provider)(nil)
)

// Open loads the module, finds the token, logs in and reads the token's
// HMAC mechanisms. A wrong PIN is ErrPermissionDenied.
func Open(ctx context.Context, cfg Config) (*Provider, error) {
	cfg.fill()
	if cfg.TokenLabel == "" && cfg.TokenSerial == "" {
		return nil, fmt.Errorf("pkcs11: no token label or serial configured")
	}
	mod, err := openModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	p := &Provider{cfg: cfg, mod: mod, ctx: mod.ctx, cache: objectCache{keys: map[string]*key{}}}
	p.cfg.PIN = bytes.Clone(cfg.PIN)
	if err := p.findToken(); err != nil {
		mod.release()
		return nil, err
	}
	p.cache.copies.on.Store(p.copiesWanted())
	p.pool = newPool(p, cfg.Sessions, cfg.SessionWait)
	if err := p.login(); err != nil {
		p.pool.closeAll()
		mod.release()
		return nil, err
	}
	if err := p.readMechanisms(); err != nil {
		p.pool.closeAll()
		mod.release()
		return nil, err
	}
	mod.calls.Lock()
	mod.users[p] = true
	mod.calls.Unlock()
	return p, nil
}

func (p *Provider) findToken() error {
	slots, err := p.ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("pkcs11: list slots: %w", err)
	}
	var seen []string
	for _, s := range slots {
		ti, err := p.ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		label, serial := strings.TrimRight(ti.Label, " \x00"), strings.TrimRight(ti.SerialNumber, " \x00")
		seen = append(seen, fmt.Sprintf("%q (serial %s)", label, serial))
		if (p.cfg.TokenLabel == "" || label == p.cfg.TokenLabel) && (p.cfg.TokenSerial == "" || serial == p.cfg.TokenSerial) {
			p.slot = s
			return nil
		}
	}
	want := "label " + fmt.Sprintf("%q", p.cfg.TokenLabel)
	if p.cfg.TokenSerial != "" {
		want = "serial " + p.cfg.TokenSerial
	}
	return fmt.Errorf("pkcs11: %w: no token with %s in %s (tokens: %s)", providers.ErrUnavailable, want, p.cfg.Module, strings.Join(seen, ", "))
}

// copiesWanted says whether keys are to be used through session copies:
// as configured, and with CopiesAuto only where they pay (copiesPay).
func (p *Provider) copiesWanted() bool {
	switch p.cfg.KeyCopies {
	case CopiesOn:
		return true
	case CopiesOff:
		return false
	}
	ti, err := p.ctx.GetTokenInfo(p.slot)
	return err == nil && copiesPay(ti.ManufacturerID)
}

// KeyCopies reports whether keys are used through session copies.
func (p *Provider) KeyCopies() bool { return p.cache.copies.on.Load() }

// login logs the application in; login is per application, not per
// session, so one session serves. "Already logged in" is success.
//
// Tokens lock their user PIN after a few wrong tries, so a PIN the token
// rejected (changed by an operator, or a token that came back
// re-initialized) is not tried again: login then reads the PIN file
// anew, and fails with ErrUnavailable at once while it holds the same PIN.
func (p *Provider) login() error {
	p.loginMu.Lock()
	defer p.loginMu.Unlock()
	if p.rejectedPIN != nil && p.cfg.ReadPIN != nil {
		if pin, err := p.cfg.ReadPIN(); err == nil {
			clear(p.cfg.PIN)
			p.cfg.PIN = pin
		}
	}
	sum := sha256.Sum256(p.cfg.PIN)
	if p.rejectedPIN != nil && *p.rejectedPIN == sum {
		return fmt.Errorf("pkcs11: login: %w", providers.Publicf(providers.ErrUnavailable,
			"provider %q is unavailable: the token rejected its PIN, which is not tried again until it changes", p.cfg.Name))
	}
	s, err := p.pool.get(context.Background())
	if err != nil {
		return err
	}
	p.logins.Add(1)
	err = p.ctx.Login(s.h, p11.CKU_USER, string(p.cfg.PIN))
	if err != nil && rv(err) != p11.CKR_USER_ALREADY_LOGGED_IN {
		p.pool.put(s, err)
		err = classify("login", err)
		if errors.Is(err, providers.ErrPermissionDenied) {
			p.rejectedPIN = &sum
		}
		return err
	}
	p.rejectedPIN = nil
	relogin := p.gen.Add(1) > 1
	p.pool.put(s, nil)
	if relogin {
		// Handles found under the old login are looked up again; copies
		// made under it may be gone with it.
		p.invalidateAll(false)
	}
	return nil
}

// loggedIn reports whether the session sees the user's login.
func (p *Provider) loggedIn(s *session) bool {
	info, err := p.ctx.GetSessionInfo(s.h)
	return err == nil && (info.State == p11.CKS_RO_USER_FUNCTIONS || info.State == p11.CKS_RW_USER_FUNCTIONS)
}

func (p *Provider) readMechanisms() error {
	list, err := p.ctx.GetMechanismList(p.slot)
	if err != nil {
		return fmt.Errorf("pkcs11: mechanism list: %w", err)
	}
	have := map[uint]bool{}
	for _, m := range list {
		have[m.Mechanism] = true
	}
	p.mech = map[providers.Algorithm]uint{}
	for _, alg := range providers.Algorithms() {
		// A missing entry must not read as mechanism 0, which is
		// CKM_RSA_PKCS_KEY_PAIR_GEN and listed by most tokens.
		if m, ok := mechanisms[alg]; ok && have[m] {
			p.mech[alg] = m
			p.algs = append(p.algs, alg)
		}
	}
	if len(p.algs) == 0 {
		return fmt.Errorf("pkcs11: token has no HMAC mechanism")
	}
	return nil
}

// Name returns the provider's configured name.
func (p *Provider) Name() string { return p.cfg.Name }

// Kind returns "pkcs11".
func (p *Provider) Kind() string { return "pkcs11" }

// Timeout is how long the agent waits for one call before it answers
// ErrUnavailable.
func (p *Provider) Timeout() time.Duration { return p.cfg.Timeout }

// Parallelism is the session pool's size, but no more than the CPUs the
// agent runs on: more one-shots at once would only wait for a session,
// and a token library's calls (SoftHSM2's all of them) run on the
// agent's own CPUs, where each thread in one takes a share of the CPU
// from the readers that serve every other caller. Measured with a flood
// from one uid against SoftHSM2 on 2 CPUs, another caller's median
// latency was 6-9 ms with 8 calls at once, 2-3 ms with 2.
func (p *Provider) Parallelism() int { return min(p.cfg.Sessions, runtime.GOMAXPROCS(0)) }

// Algorithms lists the HMAC algorithms the token offers.
func (p *Provider) Algorithms() []providers.Algorithm { return p.algs }

// enter starts a call into the module; leave must follow.
// While the token is down it fails at once with ErrUnavailable.
func (p *Provider) enter() error {
	p.mod.calls.RLock()
	if p.closed {
		p.mod.calls.RUnlock()
		return fmt.Errorf("pkcs11: %w", providers.ErrClosed)
	}
	if p.down.Load() {
		p.mod.calls.RUnlock()
		return p.unavailable()
	}
	return nil
}

func (p *Provider) leave() { p.mod.calls.RUnlock() }

// withSession runs f on a pooled session, retrying on a fresh session when
// it failed because the session broke, the login was lost or a key handle
// went stale. One fault can reveal the next (a closed session, then the
// lost login behind it), so up to maxAttempts. f must be safe to rerun.
func (p *Provider) withSession(ctx context.Context, f func(s *session) error) error {
	_, err := p.attempt(ctx, false, f)
	return err
}

// attempt is withSession, and with keep returns the session f succeeded
// on still held: the caller gives it back to the pool.
func (p *Provider) attempt(ctx context.Context, keep bool, f func(s *session) error) (*session, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	var err error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		var s *session
		s, err = p.pool.get(ctx)
		if err != nil {
			return nil, err
		}
		err = f(s)
		if err == nil && keep {
			return s, nil
		}
		p.pool.put(s, err)
		if err = p.checkToken(err); p.down.Load() {
			return nil, err
		}
		if err == nil || !p.recover(err) {
			return nil, err
		}
	}
	return nil, err
}

const maxAttempts = 3

// recover repairs what err says is broken and reports whether a retry may
// succeed.
func (p *Provider) recover(err error) bool {
	switch {
	case notLoggedIn(err):
		return p.login() == nil
	case sessionBroken(err):
		return true
	case handleStale(err):
		p.invalidateAll(false)
		return true
	}
	return false
}

// Health checks that the token is present and the agent logged in. A
// token found gone marks the provider down and starts its recovery.
func (p *Provider) Health(ctx context.Context) error {
	if err := p.enter(); err != nil {
		return err
	}
	err := p.tokenPresent()
	if err != nil {
		p.setDown(err)
		err = p.unavailable()
	}
	p.leave()
	if err != nil {
		return err
	}
	return p.withSession(ctx, func(s *session) error {
		if _, err := p.ctx.GetTokenInfo(p.slot); err != nil {
			return err
		}
		if !p.loggedIn(s) {
			return p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
		}
		return nil
	})
}

// Sessions reports the session pool's state.
func (p *Provider) Sessions() SessionStats {
	open, idle := len(p.pool.slots), len(p.pool.idle)
	p.pool.mu.Lock()
	kept := p.pool.keptTotal
	p.pool.mu.Unlock()
	return SessionStats{
		Open:   open,
		InUse:  max(open-idle, 0),
		Kept:   kept,
		Waits:  p.pool.waits.Load(),
		Copies: int(p.cache.copies.held.Load()),
	}
}

// Stats reports the session pool and the key copies for metrics.
func (p *Provider) Stats() []providers.Stat {
	st := p.Sessions()
	return []providers.Stat{
		{Name: "pkcs11_sessions_open", Help: "PKCS#11 sessions open.", Value: uint64(st.Open)},
		{Name: "pkcs11_sessions_in_use", Help: "PKCS#11 sessions in use.", Value: uint64(st.InUse)},
		{Name: "pkcs11_sessions_kept", Help: "PKCS#11 sessions kept by streaming contexts.", Value: uint64(st.Kept)},
		{Name: "pkcs11_session_waits_total", Help: "Requests that waited for a PKCS#11 session.", Counter: true, Value: st.Waits},
		{Name: "pkcs11_key_copies", Help: "Per-session copies of PKCS#11 keys.", Value: uint64(st.Copies)},
	}
}

// HealthMessage is what a failed health probe means for a token.
func (p *Provider) HealthMessage() string { return "the token is missing or not logged in" }

var (
	_ providers.HealthChecker   = (*Provider)(nil)
	_ providers.HealthDescriber = (*Provider)(nil)
	_ providers.StatsReporter   = (*Provider)(nil)
)

// Close waits for calls in flight, logs out, closes every session and
// finalizes the module if no other provider uses it.
func (p *Provider) Close() error {
	p.mod.calls.Lock()
	defer p.mod.calls.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	delete(p.mod.users, p)
	p.cache.copies.mu.Lock()
	p.cache.copies.closeLocked(p.ctx)
	p.cache.copies.mu.Unlock()
	p.pool.closeAll()
	clear(p.cfg.PIN)
	p.mod.release()
	return nil
}
