//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// rv returns the PKCS#11 return code in err, or 0.
func rv(err error) uint {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

// sessionBroken reports whether err means the session can no longer be
// used and must be discarded.
func sessionBroken(err error) bool {
	switch rv(err) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_DEVICE_REMOVED,
		p11.CKR_DEVICE_ERROR, p11.CKR_GENERAL_ERROR, p11.CKR_TOKEN_NOT_PRESENT,
		p11.CKR_DEVICE_MEMORY, p11.CKR_CRYPTOKI_NOT_INITIALIZED,
		// An operation left active is a bug, but closing the session
		// repairs it where anything else would fail again.
		p11.CKR_OPERATION_ACTIVE:
		return true
	}
	return false
}

// handleStale reports whether err means a key's object handle is no longer
// valid (the key was deleted, or handles changed after a new login).
func handleStale(err error) bool {
	switch rv(err) {
	case p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

func notLoggedIn(err error) bool { return rv(err) == p11.CKR_USER_NOT_LOGGED_IN }

// signatureRejected reports whether the token answered a verification
// with "wrong tag", which also ends the operation.
func signatureRejected(err error) bool {
	return rv(err) == p11.CKR_SIGNATURE_INVALID || rv(err) == p11.CKR_SIGNATURE_LEN_RANGE
}

// classify wraps a PKCS#11 error in the contract's sentinel, keeping the
// return code reachable with errors.As for the log.
func classify(op string, err error) error {
	var sentinel error
	switch rv(err) {
	case p11.CKR_SIGNATURE_INVALID, p11.CKR_SIGNATURE_LEN_RANGE:
		sentinel = providers.ErrInvalidSignature
	case p11.CKR_MECHANISM_INVALID, p11.CKR_KEY_TYPE_INCONSISTENT, p11.CKR_KEY_SIZE_RANGE,
		p11.CKR_KEY_FUNCTION_NOT_PERMITTED, p11.CKR_MECHANISM_PARAM_INVALID:
		sentinel = providers.ErrUnsupportedAlgorithm
	case p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID:
		sentinel = providers.ErrKeyNotFound
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_LOCKED:
		sentinel = providers.ErrPermissionDenied
	case p11.CKR_WRAPPED_KEY_INVALID, p11.CKR_WRAPPED_KEY_LEN_RANGE,
		p11.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, p11.CKR_UNWRAPPING_KEY_SIZE_RANGE,
		p11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		// The caller's wrapped key or its choice of wrapping key: a
		// mistake to report, not a device to mark down and retry.
		sentinel = providers.ErrInvalidArgument
	default:
		sentinel = providers.ErrUnavailable
	}
	return fmt.Errorf("pkcs11: %s: %w: %w", op, sentinel, err)
}
