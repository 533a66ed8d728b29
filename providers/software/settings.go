package software

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Kind is the software keystore's kind, for the agent's registry.
var Kind = providers.Kind{NewSettings: func() providers.Settings { return new(Settings) }}

// Settings are a software [[provider]] table's own fields.
type Settings struct {
	// Path is the keystore directory.
	Path string `toml:"path"`
}

// Check implements providers.Settings.
func (s *Settings) Check() []providers.FieldError {
	switch {
	case s.Path == "":
		return []providers.FieldError{{Field: "path", Msg: "required for a software provider"}}
	case !filepath.IsAbs(s.Path):
		return []providers.FieldError{{Field: "path", Msg: fmt.Sprintf("must be an absolute path, not %q", s.Path)}}
	}
	return nil
}

// Open implements providers.Settings. Key bytes that cannot be locked in
// memory are warned about in c.Log; the keys work all the same.
func (s *Settings) Open(_ context.Context, c providers.Common) (providers.Provider, error) {
	p, err := Open(c.Name, s.Path)
	if err != nil {
		return nil, err
	}
	if err := p.LockError(); err != nil && c.Log != nil {
		c.Log.Warn("software key bytes are not locked in memory and could be swapped out", "provider", c.Name, "err", err)
	}
	return p, nil
}
