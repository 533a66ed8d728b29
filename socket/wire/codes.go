package wire

import (
	"errors"
	"fmt"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Code is an error code in an ERROR reply.
type Code uint16

// Errors that exist only on the wire. The contract's errors are in
// providers.
var (
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

// The table of codes. Codes never change meaning; new ones are added at
// the end. The contract's errors are named by providers.ErrorName.
var codes = []struct {
	code Code
	err  error
	name string
}{
	{1, providers.ErrAlreadyFinalized, ""},
	{2, providers.ErrInvalidSignature, ""},
	{3, providers.ErrUnsupportedAlgorithm, ""},
	{4, providers.ErrKeyNotFound, ""},
	{5, providers.ErrPermissionDenied, ""},
	{6, providers.ErrKeyExists, ""},
	{7, providers.ErrInvalidArgument, ""},
	{8, providers.ErrNotSupported, ""},
	{9, providers.ErrLimit, ""},
	{10, providers.ErrUnavailable, ""},
	{11, providers.ErrContextLost, ""},
	{12, providers.ErrUnknownContext, ""},
	{13, ErrBadRequest, "bad_request"},
	{14, ErrUnknownMessage, "unknown_message"},
	{15, ErrVersion, "version"},
	{16, ErrInternal, "internal"},
	{17, ErrShuttingDown, "shutting_down"},
	{18, providers.ErrClosed, ""},
}

// Codes of errors the server sends for framing faults.
const (
	CodeBadRequest     Code = 13
	CodeUnknownMessage Code = 14
	CodeVersion        Code = 15
	CodeInternal       Code = 16
	CodeShuttingDown   Code = 17
)

// CodeOf returns the code of the first sentinel err wraps, or CodeInternal.
func CodeOf(err error) Code {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

// Sentinel returns the error a code stands for, or nil for an unknown code.
func (c Code) Sentinel() error {
	for _, e := range codes {
		if e.code == c {
			return e.err
		}
	}
	return nil
}

func (c Code) String() string {
	for _, e := range codes {
		if e.code == c {
			if e.name == "" {
				return providers.ErrorName(e.err)
			}
			return e.name
		}
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// RemoteError is an ERROR reply as a Go error. errors.Is matches it to the
// sentinel of its code, so callers test for providers.ErrInvalidSignature
// and the like whether or not a socket was in between.
type RemoteError struct {
	Code    Code
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		if s := e.Code.Sentinel(); s != nil {
			return s.Error()
		}
		return e.Code.String()
	}
	return e.Message
}

// Unwrap returns the sentinel of the code, so errors.Is works.
func (e *RemoteError) Unwrap() error { return e.Code.Sentinel() }

// PublicMessage returns the text a client may see for err: the message of
// a providers.PublicError in its chain, else only its sentinel's text.
// Provider errors carry paths and device return codes, which belong in the
// agent's log, not in a client's hands.
func PublicMessage(err error) string {
	if pe, ok := errors.AsType[*providers.PublicError](err); ok {
		return pe.Msg
	}
	if re, ok := errors.AsType[*RemoteError](err); ok {
		return re.Error()
	}
	if s := CodeOf(err).Sentinel(); s != nil {
		return s.Error()
	}
	return ErrInternal.Error()
}
