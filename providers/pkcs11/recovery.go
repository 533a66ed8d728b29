//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// A token can fail as a whole: removed, its device broken, or, with
// SoftHSM2, its directory gone. The module then answers CKR_GENERAL_ERROR,
// CKR_TOKEN_NOT_PRESENT and the like, or simply finds no objects, and
// C_GetTokenInfo fails. Nothing short of C_Finalize and C_Initialize makes
// a module see the token again when it comes back.
//
// So a failure that could be the token's (a token-wide return code, a
// stale handle, a key not found) is checked with C_GetTokenInfo. If the
// token is gone, the provider is down: every call fails at once with
// ErrUnavailable, never ErrKeyNotFound, and the module's recovery loop
// (module.go) waits until no call is in flight, re-initializes the module,
// finds the token by label and logs in again with the PIN read anew, with
// backoff, until the token is back.
//
// Re-initializing changes every handle. resetLocked is the one place that
// lets go of them: the pool's sessions, and through invalidateAll the
// copies' session and every key's handle and copy. Contexts that hold a session
// from before find it stale and report ErrContextLost.

// health is the provider's state after a token failure, for Health and
// errors.
type health struct {
	mu     sync.Mutex
	reason error     // why it is down
	since  time.Time // when it went down
}

// tokenWide reports whether err is a return code that may mean the whole
// token failed, not one session or key.
func tokenWide(err error) bool {
	switch rv(err) {
	case p11.CKR_GENERAL_ERROR, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_REMOVED,
		p11.CKR_DEVICE_ERROR, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_CRYPTOKI_NOT_INITIALIZED,
		p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SLOT_ID_INVALID:
		return true
	}
	return false
}

// keyRefused reports whether err is a token refusing a key for an
// operation: its type, length or CKA_SIGN. The key was checked to do it,
// so a refusal may be an object emptied underneath: SoftHSM2 checks an
// object is valid and only then reads its attributes, and an object
// destroyed or dropped from its store in between reads as key type 0
// with CKA_SIGN false.
func keyRefused(err error) bool {
	switch rv(err) {
	case p11.CKR_KEY_FUNCTION_NOT_PERMITTED, p11.CKR_KEY_TYPE_INCONSISTENT, p11.CKR_KEY_SIZE_RANGE,
		p11.CKR_MECHANISM_INVALID:
		return true
	}
	return false
}

// suspect reports whether err could come from the token having gone: then
// the token is asked before the error is believed.
func suspect(err error) bool {
	return tokenWide(err) || handleStale(err) || keyRefused(err) || errors.Is(err, providers.ErrKeyNotFound)
}

// tokenPresent asks the module whether the provider's token is still in
// its slot. The caller holds enter().
func (p *Provider) tokenPresent() error {
	ti, err := p.ctx.GetTokenInfo(p.slot)
	if err != nil {
		return fmt.Errorf("pkcs11: token info: %w", err)
	}
	label, serial := strings.TrimRight(ti.Label, " \x00"), strings.TrimRight(ti.SerialNumber, " \x00")
	if p.cfg.TokenLabel != "" && label != p.cfg.TokenLabel || p.cfg.TokenSerial != "" && serial != p.cfg.TokenSerial {
		return fmt.Errorf("pkcs11: slot %d now holds token %q (serial %s)", p.slot, label, serial)
	}
	return nil
}

// checkToken is called with an error that suspect says could be the
// token's. If the token is gone it marks the provider down and returns
// ErrUnavailable in place of err; else it returns err. The caller holds
// enter().
func (p *Provider) checkToken(err error) error {
	if err == nil || !suspect(err) {
		return err
	}
	if terr := p.tokenPresent(); terr != nil {
		p.setDown(fmt.Errorf("%v (after %v)", terr, err))
		return p.unavailable()
	}
	return err
}

// setDown marks the provider down for reason and starts recovery.
func (p *Provider) setDown(reason error) {
	p.health.mu.Lock()
	if !p.down.Load() {
		p.health.since = time.Now()
	}
	p.health.reason = reason
	p.down.Store(true)
	p.health.mu.Unlock()
	p.mod.startRecovery()
}

// setUp marks the provider serving again.
func (p *Provider) setUp() {
	p.health.mu.Lock()
	p.down.Store(false)
	p.health.reason = nil
	p.health.mu.Unlock()
}

// downReason is why the provider is down, or nil. The reason is text
// only: the return codes in it must not be taken for the failed call's
// own (classify would make a stale handle ErrKeyNotFound).
func (p *Provider) downReason() error {
	p.health.mu.Lock()
	defer p.health.mu.Unlock()
	if !p.down.Load() {
		return nil
	}
	return fmt.Errorf("%w: token unavailable since %s: %v", providers.ErrUnavailable, p.health.since.UTC().Format(time.RFC3339), p.health.reason)
}

// unavailable is the error a call gets while the provider is down. It
// names the provider and nothing of the token.
func (p *Provider) unavailable() error {
	return fmt.Errorf("pkcs11: %w: %w", providers.Publicf(providers.ErrUnavailable,
		"provider %q is unavailable: its token cannot be reached; it is being recovered", p.cfg.Name), p.downReason())
}

// resetLocked forgets every handle the module gave: it is about to be
// finalized, which closes every session. Nothing here calls the module.
// The caller holds mod.calls exclusively.
func (p *Provider) resetLocked() {
	p.invalidateAll(true)
	p.pool.reset()
}

// reopenLocked finds the token again after the module was initialized
// anew and logs in, with the PIN read again if it comes from a file. The
// caller holds mod.calls exclusively.
func (p *Provider) reopenLocked() error {
	if err := p.findToken(); err != nil {
		return err
	}
	if p.cfg.ReadPIN != nil {
		pin, err := p.cfg.ReadPIN()
		if err != nil {
			return fmt.Errorf("pkcs11: read the PIN again: %w", err)
		}
		clear(p.cfg.PIN)
		p.cfg.PIN = pin
	}
	return p.login()
}
