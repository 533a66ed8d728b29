package providers

import (
	"errors"
	"fmt"
)

// The sentinel errors of the contract. Each has a row in the error table
// below, and so a wire code that keeps its identity in every client.
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

	// The errors below exist only on the wire: the agent's server sends
	// them for faults of framing and of the connection.

	// ErrBadRequest: a malformed message or frame.
	ErrBadRequest = errors.New("malformed request")
	// ErrUnknownMessage: a message type the agent does not know.
	ErrUnknownMessage = errors.New("unknown message type")
	// ErrVersion: no protocol version both sides speak, or no handshake.
	ErrVersion = errors.New("protocol version not supported")
	// ErrInternal: the agent failed; its log says why.
	ErrInternal = errors.New("internal error in the agent")
	// ErrShuttingDown: the agent is stopping and takes no new work.
	ErrShuttingDown = errors.New("agent is shutting down")
)

// ErrorKind is one row of the error table: the sentinel, its code in the
// wire protocol's ERROR reply and its short name (the protocol's, the
// audit log's and the metrics'). Every other list of errors (socket/wire,
// the clients in other languages, docs/protocol.md) is derived from or
// checked against the table.
type ErrorKind struct {
	Code uint16
	Err  error
	Name string
}

// errorTable is the error table. Codes never change meaning; new ones are
// added at the end, so a row's code is its place in the table plus one
// (TestErrorTable checks it). Its order is the order errors.Is tries them in, so an
// error that wraps two sentinels is known by the first.
var errorTable = [...]ErrorKind{
	{1, ErrAlreadyFinalized, "already_finalized"},
	{2, ErrInvalidSignature, "invalid_signature"},
	{3, ErrUnsupportedAlgorithm, "unsupported_algorithm"},
	{4, ErrKeyNotFound, "key_not_found"},
	{5, ErrPermissionDenied, "permission_denied"},
	{6, ErrKeyExists, "key_exists"},
	{7, ErrInvalidArgument, "invalid_argument"},
	{8, ErrNotSupported, "not_supported"},
	{9, ErrLimit, "limit"},
	{10, ErrUnavailable, "unavailable"},
	{11, ErrContextLost, "context_lost"},
	{12, ErrUnknownContext, "unknown_context"},
	{13, ErrBadRequest, "bad_request"},
	{14, ErrUnknownMessage, "unknown_message"},
	{15, ErrVersion, "version"},
	{16, ErrInternal, "internal"},
	{17, ErrShuttingDown, "shutting_down"},
	{18, ErrClosed, "closed"},
}

// ErrorKinds returns a copy of the error table, in code order.
func ErrorKinds() []ErrorKind {
	return append([]ErrorKind(nil), errorTable[:]...)
}

// KindOf returns the row of the first sentinel of the table that err
// wraps, and false if it wraps none.
func KindOf(err error) (ErrorKind, bool) {
	for _, k := range errorTable {
		if errors.Is(err, k.Err) {
			return k, true
		}
	}
	return ErrorKind{}, false
}

// KindByCode returns the row of code, and false for a code outside the
// table.
func KindByCode(code uint16) (ErrorKind, bool) {
	if code == 0 || int(code) > len(errorTable) {
		return ErrorKind{}, false
	}
	return errorTable[code-1], true
}

// ErrorName is the short name of the sentinel err wraps
// ("invalid_signature", ...), "ok" for nil, or "" if it wraps none.
func ErrorName(err error) string {
	if err == nil {
		return "ok"
	}
	k, _ := KindOf(err)
	return k.Name
}

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
