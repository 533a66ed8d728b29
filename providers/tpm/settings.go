package tpm

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Kind is the TPM's kind, for the agent's registry. A TPM can stall, so
// the kind takes a timeout.
var Kind = providers.Kind{NewSettings: func() providers.Settings { return new(Settings) }, Timeout: true}

// Settings are a tpm [[provider]] table's own fields.
type Settings struct {
	Device   string `toml:"device"`    // /dev/tpmrm0, unix:/path or tcp:host:port
	StateDir string `toml:"state_dir"` // key blobs
	Slots    int    `toml:"slots"`     // objects the TPM holds at once (default 3)
}

// Check implements providers.Settings.
func (s *Settings) Check() []providers.FieldError {
	var bad []providers.FieldError
	if s.Device == "" {
		bad = append(bad, providers.FieldError{Field: "device", Msg: "required for a tpm provider (for example /dev/tpmrm0)"})
	}
	if s.StateDir == "" {
		bad = append(bad, providers.FieldError{Field: "state_dir", Msg: "required for a tpm provider"})
	} else if !filepath.IsAbs(s.StateDir) {
		bad = append(bad, providers.FieldError{Field: "state_dir", Msg: fmt.Sprintf("must be an absolute path, not %q", s.StateDir)})
	}
	if s.Slots < 0 {
		bad = append(bad, providers.FieldError{Field: "slots", Msg: "must not be negative"})
	}
	return bad
}

// Open implements providers.Settings.
func (s *Settings) Open(ctx context.Context, c providers.Common) (providers.Provider, error) {
	p, err := Open(ctx, Config{Name: c.Name, Device: s.Device, StateDir: s.StateDir, Slots: s.Slots, Timeout: c.Timeout})
	if err != nil {
		return nil, err
	}
	if c.Log != nil {
		c.Log.Info("tpm ready", "provider", c.Name, "device", s.Device, "algorithms", fmt.Sprint(p.Algorithms()))
	}
	return p, nil
}
