package pkcs11

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Kind is PKCS#11's kind, for the agent's registry. A token can stall, so
// the kind takes a timeout.
var Kind = providers.Kind{NewSettings: func() providers.Settings { return new(Settings) }, Timeout: true}

// Settings are a pkcs11 [[provider]] table's own fields. The PIN is never
// among them: it comes from a file or the environment.
type Settings struct {
	Module       string             `toml:"module"`
	TokenLabel   string             `toml:"token"`
	TokenSerial  string             `toml:"serial"`
	PINFile      string             `toml:"pin_file"`
	PINEnv       string             `toml:"pin_env"`
	Sessions     int                `toml:"sessions"`
	SessionWait  providers.Duration `toml:"session_wait"`
	MaxCopyBytes int64              `toml:"max_copy_bytes"`
	// SessionKeyCopies: keys used through session-object copies; unset,
	// only on SoftHSM2 (CopiesAuto).
	SessionKeyCopies *bool `toml:"session_key_copies"`
}

// Check implements providers.Settings.
func (s *Settings) Check() []providers.FieldError {
	var bad []providers.FieldError
	if s.Module == "" {
		bad = append(bad, providers.FieldError{Field: "module", Msg: "required for a pkcs11 provider"})
	}
	if s.TokenLabel == "" && s.TokenSerial == "" {
		bad = append(bad, providers.FieldError{Field: "token", Msg: "a pkcs11 provider needs token (label) or serial"})
	}
	if s.PINFile == "" && s.PINEnv == "" {
		bad = append(bad, providers.FieldError{Field: "pin_file", Msg: "a pkcs11 provider needs pin_file or pin_env (never the PIN itself)"})
	}
	if s.Sessions < 0 {
		bad = append(bad, providers.FieldError{Field: "sessions", Msg: "must not be negative"})
	}
	return bad
}

// Open implements providers.Settings: it reads the PIN, opens the token
// and logs in.
func (s *Settings) Open(ctx context.Context, c providers.Common) (providers.Provider, error) {
	pin, err := s.readPIN(c)
	if err != nil {
		return nil, err
	}
	defer clear(pin)
	cfg := Config{
		Name: c.Name, Module: s.Module, TokenLabel: s.TokenLabel, TokenSerial: s.TokenSerial,
		PIN: pin, Sessions: s.Sessions, SessionWait: s.SessionWait.Duration, MaxCopyBytes: s.MaxCopyBytes,
		KeyCopies: CopiesAuto, Timeout: c.Timeout,
	}
	if s.SessionKeyCopies != nil {
		cfg.KeyCopies = CopiesOff
		if *s.SessionKeyCopies {
			cfg.KeyCopies = CopiesOn
		}
	}
	if s.PINFile != "" {
		// Read again when the token is logged in anew, so a changed file
		// is used. A PIN from the environment is not read again: the
		// variable is gone by then, and the provider keeps its own copy.
		cfg.ReadPIN = func() ([]byte, error) { return readSecretFile(s.PINFile) }
	}
	p, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if c.Log != nil {
		c.Log.Info("pkcs11 token ready", "provider", c.Name, "token", s.TokenLabel, "algorithms", fmt.Sprint(p.Algorithms()),
			"session_key_copies", p.KeyCopies())
	}
	return p, nil
}

// readPIN reads the PIN from its file (owned by the agent's user, 0600 or
// stricter, not a link) or its environment variable; never from the
// config text or argv.
//
// A PIN in the environment can be read from /proc/PID/environ by any
// process of the same user until the agent has made itself non-dumpable,
// and by root always; so pin_env is warned about. The variable is removed
// from the agent's own environment once read, so that nothing the agent
// starts inherits it and no later lookup finds it; the copy the kernel
// keeps in /proc/PID/environ is not changed by that.
func (s *Settings) readPIN(c providers.Common) ([]byte, error) {
	if s.PINFile != "" {
		pin, err := readSecretFile(s.PINFile)
		if err != nil {
			return nil, fmt.Errorf("pin_file: %w", err)
		}
		return pin, nil
	}
	v, ok := os.LookupEnv(s.PINEnv)
	if !ok {
		return nil, fmt.Errorf("pin_env: $%s is not set", s.PINEnv)
	}
	os.Unsetenv(s.PINEnv)
	if c.Log != nil {
		c.Log.Warn("the PIN comes from the environment, which processes of the same user could read (/proc/PID/environ) until the agent started; use pin_file",
			"provider", c.Name, "pin_env", s.PINEnv)
	}
	return []byte(v), nil
}

// readSecretFile reads a private file (see privfile.ReadSecret) without
// its trailing newline.
func readSecretFile(path string) ([]byte, error) {
	b, err := privfile.ReadSecret(path)
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(b, "\r\n"), nil
}
