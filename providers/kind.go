package providers

import (
	"context"
	"log/slog"
	"time"
)

// Kind is one kind of provider ("software", "pkcs11", "tpm"), as its own
// package describes it: what its [[provider]] table holds, how the table
// is checked and how the provider is opened. The agent's registry of kinds
// is a map from the type name to a Kind; adding a kind is its package and
// one entry there.
type Kind struct {
	// NewSettings returns empty settings of the kind, for a [[provider]]
	// table to be decoded into by their `toml` field tags.
	NewSettings func() Settings
	// Timeout is true for a kind whose calls reach a device that can
	// stall, and so takes the common timeout field.
	Timeout bool
}

// Settings are one [[provider]] table's fields for its kind, decoded from
// the table. The fields every kind shares (name, type, timeout) are not
// among them: they come in Common.
type Settings interface {
	// Check returns every broken rule, each naming its field as written in
	// the table ("module").
	Check() []FieldError
	// Open opens the provider from checked settings. Its error is for the
	// agent's log and its operator, not for clients.
	Open(ctx context.Context, common Common) (Provider, error)
}

// Common is what every [[provider]] table has besides its kind's settings,
// and what opening a provider is given.
type Common struct {
	Name string
	// Timeout is the configured timeout, zero for the kind's default.
	Timeout time.Duration
	// Log is the agent's log, for what the operator should know at start
	// (a PIN read from the environment, key bytes that cannot be locked).
	Log *slog.Logger
}

// FieldError is one broken rule of a [[provider]] table.
type FieldError struct {
	Field string // as written in the table
	Msg   string
}

// Duration is a time.Duration written as "30s" in a configuration file.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	d.Duration = v
	return err
}

// MarshalText writes the duration back.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
