package providertest

import (
	"context"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/providers"
)

// clientMAC drives a client.HMAC as the suite drives a provider's MAC:
// the same tests with a socket in between.
type clientMAC struct{ h *client.HMAC }

func (m clientMAC) Algorithm() providers.Algorithm               { return m.h.Algorithm() }
func (m clientMAC) Update(_ context.Context, p []byte) error     { return m.h.Update(p) }
func (m clientMAC) Finalize(ctx context.Context) ([]byte, error) { return m.h.Finalize(ctx) }
func (m clientMAC) Verify(ctx context.Context, tag []byte) error { return m.h.Verify(ctx, tag) }
func (m clientMAC) Close()                                       { m.h.Close() }
func (m clientMAC) Copy(ctx context.Context) (providers.MAC, error) {
	c, err := m.h.Copy(ctx)
	if err != nil {
		return nil, err
	}
	return clientMAC{c}, nil
}

// ClientSubject is the subject for an agent reached through c, with keys
// imported into the named provider.
func ClientSubject(c *client.Client, provider string, algs []providers.Algorithm) Subject {
	return Subject{
		Open: func(ctx context.Context, key string, alg providers.Algorithm) (providers.MAC, error) {
			h, err := c.New(ctx, key, alg)
			if err != nil {
				return nil, err
			}
			return clientMAC{h}, nil
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
