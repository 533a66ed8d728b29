package providers

import (
	"errors"
	"fmt"
)

// The sentinel errors of the contract. Each has a wire code (see
// socket/wire) so that it keeps its identity in every client.
var (
	// ErrAlreadyFinalized: the context was finished by Finalize or Verify.
	ErrAlreadyFinalized = errors.New("context already finalized")
	// ErrInvalidSignature: a tag did not verify, including a tag of the
	// wrong length.
	ErrInvalidSignature = errors.New("invalid signature")
	// ErrUnsupportedAlgorithm: the algorithm is unknown, or the key's
	// provider cannot do it.
	ErrUnsupportedAlgorithm = errors.New("unsupported algorithm")
	// ErrKeyNotFound: no key has that name.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists: a key with that name exists already.
	ErrKeyExists = errors.New("key already exists")
	// ErrPermissionDenied: the caller may not do this with this key.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrInvalidArgument: a malformed name, length or value.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotSupported: the provider lacks this power (for example deleting
	// a key it did not create).
	ErrNotSupported = errors.New("operation not supported by provider")
	// ErrLimit: a configured limit was reached (contexts, frame size,
	// input kept for Copy, ...). The message says which.
	ErrLimit = errors.New("limit reached")
	// ErrUnavailable: the provider cannot serve now (device gone, session
	// lost, timeout waiting for a session); a later call may succeed.
	ErrUnavailable = errors.New("provider unavailable")
	// ErrContextLost: the context's state was lost underneath it (device
	// restarted, session closed); it cannot be continued.
	ErrContextLost = errors.New("context lost")
	// ErrUnknownContext: a request names a context its connection does
	// not have (never opened, already finished, or another connection's).
	ErrUnknownContext = errors.New("unknown context")
	// ErrClosed: the provider, agent or connection was closed.
	ErrClosed = errors.New("closed")
)

// PublicError carries a message that is safe to show a client: it names
// only what the client sent or may know (a key name, a limit). The server
// sends a client the message of a PublicError in an error's chain and
// otherwise only the sentinel's text.
type PublicError struct {
	Err error // a sentinel of this package, or of the wire protocol
	Msg string
}

func (e *PublicError) Error() string { return e.Msg }
func (e *PublicError) Unwrap() error { return e.Err }

// Publicf returns a PublicError for sentinel with a formatted message.
func Publicf(sentinel error, format string, args ...any) error {
	return &PublicError{Err: sentinel, Msg: fmt.Sprintf(format, args...)}
}
