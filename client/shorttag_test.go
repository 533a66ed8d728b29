package client_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// shortTagAgent serves the handshake, then answers OPEN with OK and MAC
// and FINALIZE with a one-byte tag, as a broken agent or provider might.
func shortTagAgent(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fr := wire.NewFrameReader(bufio.NewReader(c), wire.DefaultMaxFrame)
				for {
					body, err := fr.Next()
					if err != nil {
						return
					}
					var m wire.Message
					if err := wire.Decode(body, &m); err != nil {
						return
					}
					fr.Release()
					r := wire.Message{ID: m.ID}
					switch m.Type {
					case wire.TypeHello:
						r.Type, r.Version, r.MaxFrame, r.MaxContexts, r.MaxInFlight = wire.TypeHelloReply, wire.Version, wire.DefaultMaxFrame, 64, 64
					case wire.TypeOpen:
						r.Type = wire.TypeOK
					case wire.TypeMAC, wire.TypeFinalize:
						r.Type, r.Tag = wire.TypeTag, []byte{0}
					default:
						continue
					}
					b, err := r.Append(nil)
					if err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			}()
		}
	}()
	return path
}

// TestShortTagFromAgent: a tag that is not the algorithm's full length is
// never handed to the caller as a tag, from a one-shot or a context.
func TestShortTagFromAgent(t *testing.T) {
	ctx := context.Background()
	c, err := client.Dial(ctx, shortTagAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tag, err := c.MAC(ctx, "k", client.SHA256, []byte("x")); err == nil {
		t.Errorf("MAC gave a %d-byte SHA-256 tag without an error", len(tag))
	} else if !errors.Is(err, client.ErrProtocol) {
		t.Errorf("MAC: %v, want ErrProtocol", err)
	}
	h, err := c.New(ctx, "k", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	h.Update([]byte("x"))
	if tag, err := h.Finalize(ctx); err == nil {
		t.Errorf("Finalize gave a %d-byte SHA-256 tag without an error", len(tag))
	} else if !errors.Is(err, client.ErrProtocol) {
		t.Errorf("Finalize: %v, want ErrProtocol", err)
	}
}
