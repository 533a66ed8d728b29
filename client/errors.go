package client

import (
	"errors"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// The errors a call may return, compared with errors.Is. They are the
// agent's own sentinels, so they keep their identity across the socket.
var (
	ErrAlreadyFinalized     = providers.ErrAlreadyFinalized
	ErrInvalidSignature     = providers.ErrInvalidSignature
	ErrUnsupportedAlgorithm = providers.ErrUnsupportedAlgorithm
	ErrKeyNotFound          = providers.ErrKeyNotFound
	ErrKeyExists            = providers.ErrKeyExists
	ErrPermissionDenied     = providers.ErrPermissionDenied
	ErrInvalidArgument      = providers.ErrInvalidArgument
	ErrNotSupported         = providers.ErrNotSupported
	ErrLimit                = providers.ErrLimit
	ErrUnavailable          = providers.ErrUnavailable
	ErrContextLost          = providers.ErrContextLost
	ErrUnknownContext       = providers.ErrUnknownContext
	ErrProtocol             = wire.ErrBadRequest
	ErrClosed               = providers.ErrClosed

	// ErrAgentNotRunning: nothing listens at the socket path. The error's
	// text names the path.
	ErrAgentNotRunning = errors.New("agent not running")
	// ErrConnectionLost: the connection to the agent broke.
	ErrConnectionLost = errors.New("connection to the agent lost")
	// ErrUntrustedAgent: the process listening at the socket path runs as
	// a uid the client does not trust (see WithAgentUID); nothing was sent
	// to it. The error's text names the path and the uid.
	ErrUntrustedAgent = errors.New("untrusted agent")
)
