package wire

import (
	"errors"
	"fmt"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Code is an error code in an ERROR reply. The codes, their sentinels and
// their names are providers' error table.
type Code uint16

// Errors that only the server sends; their sentinels are in providers.
var (
	ErrBadRequest     = providers.ErrBadRequest
	ErrUnknownMessage = providers.ErrUnknownMessage
	ErrVersion        = providers.ErrVersion
	ErrInternal       = providers.ErrInternal
	ErrShuttingDown   = providers.ErrShuttingDown
)

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
	if k, ok := providers.KindOf(err); ok {
		return Code(k.Code)
	}
	return CodeInternal
}

// Sentinel returns the error a code stands for, or nil for an unknown code.
func (c Code) Sentinel() error {
	k, _ := providers.KindByCode(uint16(c))
	return k.Err
}

func (c Code) String() string {
	if k, ok := providers.KindByCode(uint16(c)); ok {
		return k.Name
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
