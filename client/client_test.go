package client_test

import (
	"context"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

// macAdapter lets the conformance suite drive a client.HMAC as it drives
// a provider's MAC: the same tests with a socket in between.
type macAdapter struct{ h *client.HMAC }

func (m macAdapter) Algorithm() providers.Algorithm               { return m.h.Algorithm() }
func (m macAdapter) Update(_ context.Context, p []byte) error     { return m.h.Update(p) }
func (m macAdapter) Finalize(ctx context.Context) ([]byte, error) { return m.h.Finalize(ctx) }
func (m macAdapter) Verify(ctx context.Context, tag []byte) error { return m.h.Verify(ctx, tag) }
func (m macAdapter) Close()                                       { m.h.Close() }
func (m macAdapter) Copy(ctx context.Context) (providers.MAC, error) {
	c, err := m.h.Copy(ctx)
	if err != nil {
		return nil, err
	}
	return macAdapter{c}, nil
}

// Subject returns the conformance subject for a client of an agent.
func subject(c *client.Client, provider string, algs []providers.Algorithm) providertest.Subject {
	return providertest.Subject{
		Open: func(ctx context.Context, key string, alg providers.Algorithm) (providers.MAC, error) {
			h, err := c.New(ctx, key, alg)
			if err != nil {
				return nil, err
			}
			return macAdapter{h}, nil
		},
		Import: func(ctx context.Context, name string, secret []byte) error {
			_, err := c.ImportKey(ctx, provider, name, secret)
			return err
		},
		MAC:        c.MAC,
		VerifyMAC:  c.VerifyMAC,
		Algorithms: algs,
	}
}

func TestConformanceThroughSocket(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	providertest.Run(t, subject(c, "soft", providers.Algorithms()))
}
