package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/hmac-agent/hmac-agent/agent/status"
	"github.com/hmac-agent/hmac-agent/internal/paths"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// SocketPath returns where clients look for the agent: $HMAC_AGENT_SOCK,
// else $XDG_RUNTIME_DIR/hmac-agent/agent.sock, else
// /tmp/hmac-agent-$UID/agent.sock.
func SocketPath() string { return paths.ClientSocket() }

// Client is a connection to the agent, redialled when it breaks. It is safe
// for concurrent use.
type Client struct {
	path    string
	trusted []uint32 // the uids the agent may run as

	mu     sync.Mutex
	conn   *conn
	closed bool
}

// Dial connects to the agent at path, or at SocketPath() if path is empty.
// If nothing listens there, the error wraps ErrAgentNotRunning and names
// the path.
//
// Before it sends anything, on this and every later connection, Dial
// checks who listens: the agent must run as root, as the client's own
// uid, as the uid $HMAC_AGENT_UID names (a number or a user name) or as
// one given with [WithAgentUID]. A root listener is trusted only through
// a path whose directories and links root or those uids own, none
// writable by others unless sticky: root is also the uid of sockets
// systemd hands to services of other users. Anything else is an error
// wrapping ErrUntrustedAgent that names the path and the uid found; an
// $HMAC_AGENT_UID that names no user is an error too.
func Dial(ctx context.Context, path string, opts ...Option) (*Client, error) {
	if path == "" {
		path = SocketPath()
	}
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	trusted, err := trustedUIDs(o)
	if err != nil {
		return nil, err
	}
	c := &Client{path: path, trusted: trusted}
	if _, err := c.current(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Path is the socket path the client dials.
func (c *Client) Path() string { return c.path }

// current returns a working connection, dialling again if the last one
// broke.
func (c *Client) current(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.conn != nil && c.conn.broken() == nil {
		return c.conn, nil
	}
	cn, err := dialConn(ctx, c.path, c.trusted)
	if err != nil {
		return nil, err
	}
	c.conn = cn
	return cn, nil
}

// Close closes the connection. Contexts still open are freed by the agent.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.conn != nil {
		c.conn.close(ErrClosed)
	}
	return nil
}

// send sends a request on a working connection and returns the reply and
// the connection it came on. A request that could not be sent because the
// connection had died unnoticed is sent once more on a new connection; so
// is one that starts afresh (see startsAfresh) whose connection the agent
// closed before answering it, as it does an idle connection.
func (c *Client) send(ctx context.Context, m *wire.Message) (*conn, *call, error) {
	cn, err := c.current(ctx)
	if err != nil {
		return nil, nil, err
	}
	r, err := cn.roundTrip(ctx, m)
	if _, notSent := errors.AsType[*notSentError](err); notSent || startsAfresh(m.Type) && unanswered(err) {
		if cn, err = c.current(ctx); err != nil {
			return nil, nil, err
		}
		r, err = cn.roundTrip(ctx, m)
	}
	return cn, r, err
}

// startsAfresh reports whether a request of type t may be sent again on a
// new connection after its first one ended unanswered: running it twice
// changes nothing. A key import, generation, rotation, retirement or
// deletion may have run, and a request on a context cannot follow it to a
// new connection. OPEN is sent again by New, with a context ID of the new
// connection.
func startsAfresh(t wire.Type) bool {
	switch t {
	case wire.TypeMAC, wire.TypeVerifyMAC, wire.TypeListKeys, wire.TypeStatus:
		return true
	}
	return false
}

// do sends a request and checks the reply's type.
func (c *Client) do(ctx context.Context, m *wire.Message, want wire.Type) (*call, error) {
	_, r, err := c.send(ctx, m)
	if err != nil {
		return nil, err
	}
	if err := r.result(want); err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

// oneShotMax is the largest message MAC and VerifyMAC send in one frame;
// longer ones go through a context.
func (cn *conn) oneShotMax(key string) int {
	return cn.maxFrame - 5 - 1 - 1 - len(key) - 1 - wire.MaxTag
}

// MAC returns the full-length tag of data under the named key, in one
// round trip for messages that fit in a frame. Errors wrap
// ErrKeyNotFound, ErrUnsupportedAlgorithm, ErrPermissionDenied, ...
func (c *Client) MAC(ctx context.Context, key string, alg Algorithm, data []byte) ([]byte, error) {
	tag, _, err := c.MACVersion(ctx, key, alg, data)
	return tag, err
}

// MACVersion is MAC that also returns the version of the key that made
// the tag (0 from an agent too old to say). key may be NAME@N for
// version N alone.
func (c *Client) MACVersion(ctx context.Context, key string, alg Algorithm, data []byte) ([]byte, int, error) {
	cn, err := c.current(ctx)
	if err != nil {
		return nil, 0, err
	}
	if len(data) > cn.oneShotMax(key) {
		h, err := c.New(ctx, key, alg)
		if err != nil {
			return nil, 0, err
		}
		if err := h.Update(data); err != nil {
			h.Close()
			return nil, 0, err
		}
		tag, err := h.Finalize(ctx)
		return tag, h.KeyVersion(), err
	}
	m := wire.Message{Type: wire.TypeMAC, Algorithm: uint8(alg), Key: []byte(key), Data: data}
	r, err := c.do(ctx, &m, wire.TypeTag)
	if err != nil {
		return nil, 0, err
	}
	defer r.release()
	if err := checkTag(r.body, alg); err != nil {
		return nil, 0, err
	}
	return append([]byte(nil), r.body...), int(r.version), nil
}

// checkTag makes sure a tag from the agent is alg's full length: a
// shorter one, from a broken agent or device, is never a caller's tag.
func checkTag(tag []byte, alg Algorithm) error {
	if len(tag) != alg.Size() {
		return fmt.Errorf("%w: the agent sent a %d-byte tag for %s, whose tags are %d bytes", ErrProtocol, len(tag), alg, alg.Size())
	}
	return nil
}

// VerifyMAC checks tag over data in one round trip; the comparison is made
// in the agent, in constant time. A wrong or wrong-length tag is
// ErrInvalidSignature.
func (c *Client) VerifyMAC(ctx context.Context, key string, alg Algorithm, data, tag []byte) error {
	_, err := c.VerifyMACVersion(ctx, key, alg, data, tag)
	return err
}

// VerifyMACVersion is VerifyMAC that also returns the version of the key
// whose tag matched (0 from an agent too old to say). A plain name
// accepts a tag of any live version of its key; NAME@N only version N's.
func (c *Client) VerifyMACVersion(ctx context.Context, key string, alg Algorithm, data, tag []byte) (int, error) {
	cn, err := c.current(ctx)
	if err != nil {
		return 0, err
	}
	if len(tag) > wire.MaxTag {
		return 0, ErrInvalidSignature // longer than any digest
	}
	if len(data) > cn.oneShotMax(key) {
		h, err := c.New(ctx, key, alg)
		if err != nil {
			return 0, err
		}
		if err := h.Update(data); err != nil {
			h.Close()
			return 0, err
		}
		err = h.Verify(ctx, tag)
		return h.KeyVersion(), err
	}
	m := wire.Message{Type: wire.TypeVerifyMAC, Algorithm: uint8(alg), Key: []byte(key), Tag: tag, Data: data}
	r, err := c.do(ctx, &m, wire.TypeOK)
	if err != nil {
		return 0, err
	}
	defer r.release()
	return int(r.version), nil
}

// Keys lists the keys the caller may use (all of them for the agent's
// owner and root).
func (c *Client) Keys(ctx context.Context) ([]KeyInfo, error) {
	var keys []KeyInfo
	err := c.doJSON(ctx, &wire.Message{Type: wire.TypeListKeys}, &keys)
	return keys, err
}

// GenerateKey creates a key inside a provider (empty: the agent's
// default) of length bytes (0: the provider's default). Only the agent's
// own user and root may manage keys.
func (c *Client) GenerateKey(ctx context.Context, provider, name string, length int) (KeyInfo, error) {
	var info KeyInfo
	if length < 0 || length > 1<<31 {
		return info, fmt.Errorf("%w: key length %d", ErrInvalidArgument, length)
	}
	m := wire.Message{Type: wire.TypeGenerateKey, Provider: []byte(provider), Key: []byte(name), Length: uint32(length)}
	err := c.doJSON(ctx, &m, &info)
	return info, err
}

// ImportKey stores secret as a new key in a provider. The caller should
// zero secret afterwards.
func (c *Client) ImportKey(ctx context.Context, provider, name string, secret []byte) (KeyInfo, error) {
	var info KeyInfo
	m := wire.Message{Type: wire.TypeImportKey, Provider: []byte(provider), Key: []byte(name), Data: secret}
	err := c.doJSON(ctx, &m, &info)
	return info, err
}

// ImportWrappedKey asks a provider to unwrap wrapped under its key named
// wrappingKey (for PKCS#11, an AES key, CKM_AES_KEY_WRAP_PAD) and store the
// result as a new key, so the key's bytes never pass through the agent.
func (c *Client) ImportWrappedKey(ctx context.Context, provider, name, wrappingKey string, wrapped []byte) (KeyInfo, error) {
	var info KeyInfo
	m := wire.Message{Type: wire.TypeImportWrapped, Provider: []byte(provider), Key: []byte(name), Wrapping: []byte(wrappingKey), Data: wrapped}
	err := c.doJSON(ctx, &m, &info)
	return info, err
}

// DeleteKey destroys a key. With an empty provider, the key is the one
// the name finds.
func (c *Client) DeleteKey(ctx context.Context, provider, name string) error {
	m := wire.Message{Type: wire.TypeDeleteKey, Provider: []byte(provider), Key: []byte(name)}
	r, err := c.do(ctx, &m, wire.TypeOK)
	if err != nil {
		return err
	}
	r.release()
	return nil
}

// RotateKey adds a version to a key and makes it current: generated in
// its provider (length bytes, 0 for the provider's default) when secret
// is nil, else imported from secret, which the caller should zero
// afterwards. With an empty provider, the key is the one the name finds.
// Only the agent's own user and root may manage keys.
func (c *Client) RotateKey(ctx context.Context, provider, name string, secret []byte, length int) (VersionInfo, error) {
	var info VersionInfo
	if length < 0 || length > 1<<31 {
		return info, fmt.Errorf("%w: key length %d", ErrInvalidArgument, length)
	}
	m := wire.Message{Type: wire.TypeRotateKey, Provider: []byte(provider), Key: []byte(name), Length: uint32(length)}
	if secret != nil {
		m.Flags, m.Data = wire.FlagImport, secret
	}
	err := c.doJSON(ctx, &m, &info)
	return info, err
}

// RetireVersion stops version n of a key verifying; with destroy its
// object is deleted from the provider too. Retiring the current version
// is ErrInvalidArgument.
func (c *Client) RetireVersion(ctx context.Context, provider, name string, n int, destroy bool) error {
	if n < 1 || n > 1<<31 {
		return fmt.Errorf("%w: no key version %d", ErrInvalidArgument, n)
	}
	m := wire.Message{Type: wire.TypeRetireVersion, Provider: []byte(provider), Key: []byte(name), KeyVersion: uint32(n)}
	if destroy {
		m.Flags = wire.FlagDestroy
	}
	r, err := c.do(ctx, &m, wire.TypeOK)
	if err != nil {
		return err
	}
	r.release()
	return nil
}

// Status is the agent's account of itself; ProviderStatus is one
// provider's health.
type (
	Status         = status.Status
	ProviderStatus = status.Provider
)

// Status asks the agent how it is.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.doJSON(ctx, &wire.Message{Type: wire.TypeStatus}, &st)
	return st, err
}

func (c *Client) doJSON(ctx context.Context, m *wire.Message, v any) error {
	r, err := c.do(ctx, m, wire.TypeData)
	if err != nil {
		return err
	}
	defer r.release()
	if err := json.Unmarshal(r.body, v); err != nil {
		return fmt.Errorf("%w: %s reply: %v", ErrProtocol, m.Type, err)
	}
	return nil
}
