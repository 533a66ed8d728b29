//go:build cgo

package main

import (
	"fmt"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/internal/benchenv"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// pkcs11Direct is miekg/pkcs11 used directly, in this process, on the
// agent's token and key: the baseline for the PKCS#11 figures.
type pkcs11Direct struct {
	ctx *p11.Ctx
	s   p11.SessionHandle
	key p11.ObjectHandle
}

func openPKCS11Direct(tok *softhsm.Token) (*pkcs11Direct, error) {
	ctx := p11.New(softhsm.Module)
	if err := ctx.Initialize(); err != nil && !strings.Contains(err.Error(), "ALREADY_INITIALIZED") {
		return nil, err
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return nil, err
	}
	for _, slot := range slots {
		ti, err := ctx.GetTokenInfo(slot)
		if err != nil || strings.TrimRight(ti.Label, " ") != tok.Label {
			continue
		}
		s, err := ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION)
		if err != nil {
			return nil, err
		}
		if err := ctx.Login(s, p11.CKU_USER, tok.PIN); err != nil && !strings.Contains(err.Error(), "ALREADY_LOGGED_IN") {
			return nil, err
		}
		if err := ctx.FindObjectsInit(s, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, benchenv.PKCS11Key), p11.NewAttribute(p11.CKA_TOKEN, true)}); err != nil {
			return nil, err
		}
		hs, _, err := ctx.FindObjects(s, 1)
		ctx.FindObjectsFinal(s)
		if err != nil || len(hs) != 1 {
			return nil, fmt.Errorf("key %s not found: %v", benchenv.PKCS11Key, err)
		}
		return &pkcs11Direct{ctx: ctx, s: s, key: hs[0]}, nil
	}
	return nil, fmt.Errorf("token %s not found", tok.Label)
}

func (d *pkcs11Direct) mech() []*p11.Mechanism {
	return []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}
}

// oneShot is C_SignInit and C_Sign of 64 bytes, ops/s.
func (d *pkcs11Direct) oneShot(dur time.Duration) (float64, error) {
	msg := make([]byte, 64)
	return loop(dur, func() error {
		if err := d.ctx.SignInit(d.s, d.mech(), d.key); err != nil {
			return err
		}
		_, err := d.ctx.Sign(d.s, msg)
		return err
	})
}

// verifyOneShot is C_VerifyInit and C_Verify of 64 bytes and their tag,
// ops/s.
func (d *pkcs11Direct) verifyOneShot(dur time.Duration) (float64, error) {
	msg := make([]byte, 64)
	if err := d.ctx.SignInit(d.s, d.mech(), d.key); err != nil {
		return 0, err
	}
	tag, err := d.ctx.Sign(d.s, msg)
	if err != nil {
		return 0, err
	}
	return loop(dur, func() error {
		if err := d.ctx.VerifyInit(d.s, d.mech(), d.key); err != nil {
			return err
		}
		return d.ctx.Verify(d.s, msg, tag)
	})
}

// loop calls f for dur, calls per second.
func loop(dur time.Duration, f func() error) (float64, error) {
	n := 0
	start := time.Now()
	for time.Since(start) < dur {
		if err := f(); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// oneShotConcurrent runs oneShot on n sessions at once, total ops/s.
func (d *pkcs11Direct) oneShotConcurrent(n int, dur time.Duration) (float64, error) {
	slot, err := d.ctx.GetSessionInfo(d.s)
	if err != nil {
		return 0, err
	}
	total := make(chan float64, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			s, err := d.ctx.OpenSession(slot.SlotID, p11.CKF_SERIAL_SESSION)
			if err != nil {
				errs <- err
				return
			}
			defer d.ctx.CloseSession(s)
			one := &pkcs11Direct{ctx: d.ctx, s: s, key: d.key}
			v, err := one.oneShot(dur)
			if err != nil {
				errs <- err
				return
			}
			total <- v
		}()
	}
	sum := 0.0
	for range n {
		select {
		case v := <-total:
			sum += v
		case err := <-errs:
			return 0, err
		}
	}
	return sum, nil
}

// stream is SignUpdate of size bytes in 64 KiB parts, MB/s.
func (d *pkcs11Direct) stream(size int) (float64, error) {
	chunk := make([]byte, 64<<10)
	start := time.Now()
	if err := d.ctx.SignInit(d.s, d.mech(), d.key); err != nil {
		return 0, err
	}
	for n := 0; n < size; n += len(chunk) {
		if err := d.ctx.SignUpdate(d.s, chunk); err != nil {
			return 0, err
		}
	}
	if _, err := d.ctx.SignFinal(d.s); err != nil {
		return 0, err
	}
	return float64(size) / 1e6 / time.Since(start).Seconds(), nil
}

func (d *pkcs11Direct) close() { d.ctx.CloseSession(d.s) }
