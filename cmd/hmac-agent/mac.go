package main

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hmac-agent/hmac-agent/client"
)

func newMACCommand() *cobra.Command {
	var key, alg string
	var b64 bool
	cmd := &cobra.Command{
		Use:   "mac --key NAME --alg ALG [FILE|-]",
		Short: "Print the HMAC of a file or of standard input",
		Long: `Print the HMAC of FILE (or standard input, for "-" or no FILE) under a key
held by the agent: lowercase hex and a newline, or base64 with --base64.`,
		Example: `  printf 'payload' | hmac-agent mac --key webhook --alg sha256
  hmac-agent mac --key webhook --alg sha3_256 --base64 body.json
  hmac-agent mac --key radius --alg md5 packet.bin`,
		Args: cobra.MaximumNArgs(1),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&key, "key", "", "the key's name (required)")
	cmd.Flags().StringVar(&alg, "alg", "", "the hash: "+algorithmNames()+" (blake2b is BLAKE2b-512, blake2s BLAKE2s-256) (required)")
	cmd.Flags().BoolVar(&b64, "base64", false, "print standard base64 instead of hex")
	cmd.MarkFlagRequired("key")
	cmd.MarkFlagRequired("alg")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		a, err := parseAlgorithm(alg)
		if err != nil {
			return err
		}
		in, err := openInput(cmd, args)
		if err != nil {
			return err
		}
		defer in.Close()
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		tag, err := macInput(cmd.Context(), c, key, a, in, false, nil)
		if err != nil {
			return err
		}
		if b64 {
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(tag))
		} else {
			fmt.Fprintln(cmd.OutOrStdout(), hex.EncodeToString(tag))
		}
		return nil
	}
	return cmd
}

func newVerifyCommand() *cobra.Command {
	var key, alg, tagText string
	var b64 bool
	cmd := &cobra.Command{
		Use:   "verify --key NAME --alg ALG --tag HEX [FILE|-]",
		Short: "Check an HMAC; exit 0 if valid, 1 if invalid, 2 on any other error",
		Long: `Check that TAG is the HMAC of FILE (or standard input) under a key held by
the agent. The comparison is made inside the agent, in constant time.

Exit status: 0 when the tag is valid, 1 when it is not, 2 on any other
error (unknown key, bad hex, agent not running, ...).`,
		Example: `  hmac-agent verify --key webhook --alg sha256 --tag "$SIGNATURE" body.json && echo ok`,
		Args:    cobra.MaximumNArgs(1),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&key, "key", "", "the key's name (required)")
	cmd.Flags().StringVar(&alg, "alg", "", "the hash, as for mac (required)")
	cmd.Flags().StringVar(&tagText, "tag", "", "the tag to check, in hex (required)")
	cmd.Flags().BoolVar(&b64, "base64", false, "the tag is standard base64, not hex")
	cmd.MarkFlagRequired("key")
	cmd.MarkFlagRequired("alg")
	cmd.MarkFlagRequired("tag")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := verify(cmd, *socket, key, alg, tagText, b64, args)
		switch {
		case err == nil:
			fmt.Fprintln(cmd.OutOrStdout(), "valid")
			return nil
		case errors.Is(err, client.ErrInvalidSignature):
			return &exitError{code: 1, err: errors.New("invalid signature")}
		}
		if _, ok := errors.AsType[*exitError](err); ok {
			return err
		}
		return &exitError{code: 2, err: err}
	}
	return cmd
}

func verify(cmd *cobra.Command, socket, key, alg, tagText string, b64 bool, args []string) error {
	a, err := parseAlgorithm(alg)
	if err != nil {
		return err
	}
	var tag []byte
	if b64 {
		tag, err = base64.StdEncoding.DecodeString(tagText)
		if err != nil {
			return usageError("--tag is not valid base64: %v", err)
		}
	} else {
		tag, err = hex.DecodeString(strings.TrimSpace(tagText))
		if err != nil {
			return usageError("--tag is not valid hex: %v", err)
		}
	}
	in, err := openInput(cmd, args)
	if err != nil {
		return err
	}
	defer in.Close()
	c, err := dial(cmd, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = macInput(cmd.Context(), c, key, a, in, true, tag)
	return err
}
