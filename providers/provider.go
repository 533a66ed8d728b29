package providers

import (
	"context"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/frame"
)

// Provider is one place keys live.
type Provider interface {
	// Name is the provider's configured name, as used by --provider.
	Name() string
	// Kind is "software", "pkcs11" or "tpm".
	Kind() string
	// Key returns the named key, or an error wrapping ErrKeyNotFound.
	Key(ctx context.Context, name string) (Key, error)
	// Keys lists the keys the provider holds. It never returns key bytes.
	Keys(ctx context.Context) ([]KeyInfo, error)
	// Close releases the provider. Afterwards every method returns an
	// error wrapping ErrClosed.
	Close() error
}

// Key is a handle on one key. It is safe for concurrent use.
type Key interface {
	// Name is the key's name within its provider.
	Name() string
	// Supports reports whether NewMAC can succeed for alg.
	Supports(alg Algorithm) bool
	// NewMAC opens a context. It returns an error wrapping
	// ErrUnsupportedAlgorithm when the key cannot do alg (never deferred
	// to Finalize), or ErrUnavailable when the provider cannot serve now.
	NewMAC(ctx context.Context, alg Algorithm) (MAC, error)
}

// MAC is one HMAC computation in progress, with pyca/cryptography's
// semantics. It is not safe for concurrent use.
//
// After Finalize or Verify has been called once, whatever it returned,
// every method returns ErrAlreadyFinalized. Close may always be called and
// releases whatever the context holds.
type MAC interface {
	// Algorithm is the context's algorithm.
	Algorithm() Algorithm
	// Update appends p, which may be empty. It does not retain p.
	Update(ctx context.Context, p []byte) error
	// Copy returns an independent context in the same state.
	Copy(ctx context.Context) (MAC, error)
	// Finalize returns the full-length tag and finishes the context.
	Finalize(ctx context.Context) ([]byte, error)
	// Verify finishes the context and returns nil if tag is the full-length
	// tag, compared in constant time, or ErrInvalidSignature otherwise.
	Verify(ctx context.Context, tag []byte) error
	// Close abandons the context. It is idempotent.
	Close()
}

// Immediate is implemented by keys whose operations run on the CPU and never
// wait (the software provider). The socket server runs their requests inline
// instead of handing them to another goroutine, which matters at millions of
// requests per second.
type Immediate interface {
	Immediate() bool
}

// Retainer is implemented by contexts that keep their input past Update,
// as a PKCS#11 context keeps it to replay for Copy. UpdateRetained is
// Update for input p that lies in b, a buffer the caller holds a reference
// to: instead of copying p, the context may keep it by taking a reference
// of its own (b.Retain), which it releases when it needs p no more.
type Retainer interface {
	UpdateRetained(ctx context.Context, p []byte, b *frame.Buffer) error
}

// KeyInfo describes a key without revealing it.
type KeyInfo struct {
	Name       string      `json:"name"`
	Provider   string      `json:"provider"`
	Kind       string      `json:"kind"`
	Algorithms []Algorithm `json:"algorithms"`
	Created    time.Time   `json:"created,omitzero"`
	// Version is the current version and Versions every version, for a
	// key whose provider keeps versions (Versioner). Providers leave them
	// empty in Keys; the agent fills them in when it lists keys.
	Version  int           `json:"version,omitempty"`
	Versions []VersionInfo `json:"versions,omitempty"`
}

// OneShot is implemented by keys that compute a whole MAC in one call more
// cheaply than through a context. The agent uses it for MAC and VerifyMAC.
type OneShot interface {
	// SumMAC appends the full-length tag of data to dst.
	SumMAC(ctx context.Context, alg Algorithm, data, dst []byte) ([]byte, error)
}

// Deadliner is implemented by providers whose calls can stall (a device).
// Timeout is how long the agent waits for one call before answering
// ErrUnavailable.
type Deadliner interface{ Timeout() time.Duration }

// Parallel is implemented by providers that can serve only so many calls
// at once: a PKCS#11 provider its pool's sessions, a TPM one command at a
// time. The agent runs at most that many one-shots on the provider at
// once and queues the rest by caller, serving callers in turn.
type Parallel interface{ Parallelism() int }

// HealthChecker is implemented by providers that can tell whether their
// device is there and usable (a token present and logged in, a TPM
// answering). The agent calls it in the background, within the
// provider's timeout (Deadliner); status and metrics report the last
// answer and never wait for it.
type HealthChecker interface {
	Health(ctx context.Context) error
}

// HealthDescriber is implemented by providers that say what failing
// their health probe means for their kind ("the TPM does not answer").
// The message is public: a client sees it, so it holds no device error
// text, which goes to the agent's log.
type HealthDescriber interface {
	HealthMessage() string
}

// Stat is one figure a provider reports about itself for metrics.
type Stat struct {
	// Name is the metric family without the "hmac_agent_" prefix, starting
	// with the provider's kind ("pkcs11_sessions_open").
	Name string
	Help string
	// Counter is true for a count that only grows, false for a gauge.
	Counter bool
	Value   uint64
}

// StatsReporter is implemented by providers with figures of their own.
// Stats is called at each metrics scrape, so it must not wait on the
// device.
type StatsReporter interface {
	Stats() []Stat
}

// OneShotVerifier is implemented by keys that verify a whole message inside
// their device. The agent uses it for VerifyMAC, so the tag is compared
// where the key lives.
type OneShotVerifier interface {
	// VerifyMAC returns nil if tag is data's full-length tag, else
	// ErrInvalidSignature.
	VerifyMAC(ctx context.Context, alg Algorithm, data, tag []byte) error
}

// Generator is a provider that can create a key inside itself.
type Generator interface {
	// GenerateKey creates a key of length bytes (0 means the provider's
	// default). ErrKeyExists if the name is taken.
	GenerateKey(ctx context.Context, name string, length int) (KeyInfo, error)
}

// Importer is a provider that can take caller-supplied key bytes.
type Importer interface {
	// ImportKey stores secret under name. The provider does not retain
	// secret; the caller should zero it afterwards. ErrKeyExists if the
	// name is taken.
	ImportKey(ctx context.Context, name string, secret []byte) (KeyInfo, error)
}

// WrappedImporter is a provider that can take a key wrapped under a key
// it already holds, so the key's bytes never pass through the agent.
type WrappedImporter interface {
	// ImportWrappedKey unwraps wrapped under the key named wrappingKey and
	// stores the result under name.
	ImportWrappedKey(ctx context.Context, name, wrappingKey string, wrapped []byte) (KeyInfo, error)
}

// Deleter is a provider that can destroy a key.
type Deleter interface {
	// DeleteKey destroys the named key. ErrKeyNotFound if there is none.
	DeleteKey(ctx context.Context, name string) error
}

// Identified is implemented by keys whose provider can reach one object
// under more than one reference, as a PKCS#11 token finds one object by
// its label or by its CKA_ID. Identity is equal for two keys exactly when
// they are the same object; the agent uses it so that an object a
// configured key names cannot be reached under another name. Keys of
// providers whose only reference is the key's name need not implement it.
type Identified interface {
	Identity() string
}
