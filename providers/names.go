package providers

import "errors"

var errorNames = []struct {
	err  error
	name string
}{
	{ErrAlreadyFinalized, "already_finalized"},
	{ErrInvalidSignature, "invalid_signature"},
	{ErrUnsupportedAlgorithm, "unsupported_algorithm"},
	{ErrKeyNotFound, "key_not_found"},
	{ErrPermissionDenied, "permission_denied"},
	{ErrKeyExists, "key_exists"},
	{ErrInvalidArgument, "invalid_argument"},
	{ErrNotSupported, "not_supported"},
	{ErrLimit, "limit"},
	{ErrUnavailable, "unavailable"},
	{ErrContextLost, "context_lost"},
	{ErrUnknownContext, "unknown_context"},
	{ErrClosed, "closed"},
}

// ErrorName is the short name of the contract's sentinel err wraps
// ("invalid_signature", ...), "ok" for nil, or "" if it wraps none. The
// names are the wire protocol's and the audit log's.
func ErrorName(err error) string {
	if err == nil {
		return "ok"
	}
	for _, e := range errorNames {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	return ""
}
