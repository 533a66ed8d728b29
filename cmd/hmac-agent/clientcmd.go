package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/providers"
)

// socketFlag adds --socket to a client command.
func socketFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("socket", "", "the agent's socket (default $HMAC_AGENT_SOCK, else "+client.SocketPath()+")")
}

func dial(cmd *cobra.Command, path string) (*client.Client, error) {
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	return client.Dial(ctx, path)
}

// parseAlgorithm is ParseAlgorithm with the list of names in the error.
func parseAlgorithm(name string) (providers.Algorithm, error) {
	alg, err := providers.ParseAlgorithm(strings.ToLower(name))
	if err != nil {
		return 0, usageError("unknown algorithm %q (want one of %s)", name, algorithmNames())
	}
	return alg, nil
}

// algorithmNames lists every algorithm's name, from the one table.
func algorithmNames() string {
	var names []string
	for _, a := range providers.Algorithms() {
		names = append(names, a.String())
	}
	return strings.Join(names, ", ")
}

// openInput opens FILE, or stdin for "-" or no argument.
func openInput(cmd *cobra.Command, args []string) (io.ReadCloser, error) {
	if len(args) == 0 || args[0] == "-" {
		return io.NopCloser(cmd.InOrStdin()), nil
	}
	f, err := os.Open(args[0])
	if err != nil {
		return nil, fmt.Errorf("cannot read input: %w", err)
	}
	return f, nil
}

// oneShotLimit is the largest input sent as a single MAC request; longer
// input is streamed through a context.
const oneShotLimit = 64 << 10

// macInput computes the MAC of r, or with verify checks tag against it. A short input
// is one round trip; a long one is streamed.
func macInput(ctx context.Context, c *client.Client, key string, alg providers.Algorithm, r io.Reader, verify bool, tag []byte) ([]byte, int, error) {
	buf := make([]byte, oneShotLimit)
	n, err := io.ReadFull(r, buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		if verify {
			v, err := c.VerifyMACVersion(ctx, key, alg, buf[:n], tag)
			return nil, v, err
		}
		return c.MACVersion(ctx, key, alg, buf[:n])
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read input: %w", err)
	}
	h, err := c.New(ctx, key, alg)
	if err != nil {
		return nil, 0, err
	}
	defer h.Close()
	for {
		if err := h.Update(buf[:n]); err != nil {
			return nil, 0, err
		}
		n, err = io.ReadFull(r, buf)
		if err == io.EOF {
			break
		}
		if err != nil && err != io.ErrUnexpectedEOF {
			return nil, 0, fmt.Errorf("cannot read input: %w", err)
		}
	}
	if verify {
		err := h.Verify(ctx, tag)
		return nil, h.KeyVersion(), err
	}
	out, err := h.Finalize(ctx)
	return out, h.KeyVersion(), err
}
