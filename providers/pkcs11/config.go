package pkcs11

import "time"

// Config opens a token.
type Config struct {
	// Name is the provider's name in the agent.
	Name string
	// Module is the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel or TokenSerial chooses the token; with both, both must
	// match.
	TokenLabel  string
	TokenSerial string
	// PIN is the user PIN, read by the caller from a file or the
	// environment; the provider keeps a copy for logging in again.
	PIN []byte
	// ReadPIN, if set, reads the PIN again when the provider logs in
	// anew after its token came back, so a changed PIN file is used.
	ReadPIN func() ([]byte, error)
	// Sessions bounds the session pool (default 16: a streaming context
	// keeps one, and a quarter stay for one-shots; see keptMax).
	Sessions int
	// SessionWait bounds the wait for a free session (default 5s).
	SessionWait time.Duration
	// MaxCopyBytes bounds the input a context keeps for Copy (default
	// 64 MiB; negative disables Copy past the buffer).
	MaxCopyBytes int64
	// BufferBytes is how much input a context buffers before it takes a
	// session (default 64 KiB).
	BufferBytes int
	// Timeout is how long the agent waits for one call into the token
	// before it answers ErrUnavailable (default DefaultTimeout). A PKCS#11
	// call cannot be interrupted: the call itself runs on.
	Timeout time.Duration
	// KeyCopies says whether keys are used through session copies
	// (copies.go); the zero value is CopiesAuto.
	KeyCopies CopyMode
}

// CopyMode says when keys are used through session copies.
type CopyMode int

const (
	// CopiesAuto copies keys only on a token where that pays: SoftHSM2,
	// known by its manufacturer ID.
	CopiesAuto CopyMode = iota
	// CopiesOn copies keys on any token that allows it.
	CopiesOn
	// CopiesOff never copies keys.
	CopiesOff
)

// Defaults for zero Config fields.
const (
	DefaultSessions     = 16
	DefaultSessionWait  = 5 * time.Second
	DefaultMaxCopyBytes = 64 << 20
	DefaultBufferBytes  = 64 << 10
	DefaultTimeout      = 5 * time.Second
	// DefaultKeyLength is the length of a generated key: 64 bytes, so
	// the key is long enough for every HMAC mechanism (tokens refuse keys
	// shorter than the digest).
	DefaultKeyLength = 64
	// paddedKeyLength is what short imported keys are padded to.
	paddedKeyLength = 64
	// maxKeyLength bounds imported and generated keys.
	maxKeyLength = 4096
)

func (c *Config) fill() {
	if c.Sessions <= 0 {
		c.Sessions = DefaultSessions
	}
	if c.SessionWait <= 0 {
		c.SessionWait = DefaultSessionWait
	}
	if c.MaxCopyBytes == 0 {
		c.MaxCopyBytes = DefaultMaxCopyBytes
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.BufferBytes <= 0 {
		c.BufferBytes = DefaultBufferBytes
	}
}

// SessionStats is the session pool's state, for metrics.
type SessionStats struct {
	Open   int    // sessions open
	InUse  int    // lent out to requests now
	Kept   int    // reserved by contexts that stream (see keptMax); a stream from before a token outage keeps its reservation until it is next used
	Waits  uint64 // requests that had to wait for a session
	Copies int    // keys' session copies held
}
