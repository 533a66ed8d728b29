package providers

import "errors"

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
	// ErrClosed: the provider, agent or connection was closed.
	ErrClosed = errors.New("closed")
)
