//go:build !cgo

package main

import (
	"errors"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

type pkcs11Direct struct{}

func openPKCS11Direct(tok *softhsm.Token) (*pkcs11Direct, error) {
	return nil, errors.New("built without cgo: no PKCS#11")
}
func (d *pkcs11Direct) oneShot(time.Duration) (float64, error)       { return 0, nil }
func (d *pkcs11Direct) verifyOneShot(time.Duration) (float64, error) { return 0, nil }
func (d *pkcs11Direct) stream(int) (float64, error)                  { return 0, nil }
func (d *pkcs11Direct) oneShotConcurrent(int, time.Duration) (float64, error) {
	return 0, nil
}
func (d *pkcs11Direct) close() {}
