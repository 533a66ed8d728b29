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
	var b64, versioned bool
	cmd := &cobra.Command{
		Use:   "mac --key NAME --alg ALG [--versioned] [FILE|-]",
		Short: "Print the HMAC of a file or of standard input",
		Long: `Print the HMAC of FILE (or standard input, for "-" or no FILE) under a key
held by the agent: lowercase hex and a newline, or base64 with --base64.
The key's current version computes it; NAME@N names version N. With
--versioned the tag is prefixed by the version that computed it, as
vN:HEX, which verify --tag accepts.`,
		Example: `  printf 'payload' | hmac-agent mac --key webhook --alg sha256
  hmac-agent mac --key webhook --alg sha256 --versioned body.json
  hmac-agent mac --key webhook@1 --alg sha256 body.json
  hmac-agent mac --key webhook --alg sha3_256 --base64 body.json
  hmac-agent mac --key radius --alg md5 packet.bin`,
		Args: cobra.MaximumNArgs(1),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&key, "key", "", "the key's name (required)")
	cmd.Flags().StringVar(&alg, "alg", "", "the hash: "+algorithmNames()+" (blake2b is BLAKE2b-512, blake2s BLAKE2s-256) (required)")
	cmd.Flags().BoolVar(&b64, "base64", false, "print standard base64 instead of hex")
	cmd.Flags().BoolVar(&versioned, "versioned", false, "print vN:TAG, N being the key version that computed it")
	cmd.MarkFlagRequired("key")
	cmd.MarkFlagRequired("alg")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if versioned && b64 {
			return usageError("--versioned and --base64 cannot be used together")
		}
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
		tag, v, err := macInput(cmd.Context(), c, key, a, in, false, nil)
		if err != nil {
			return err
		}
		if versioned {
			if v == 0 {
				return errors.New("the agent does not report key versions; it is older than this command")
			}
			fmt.Fprintf(cmd.OutOrStdout(), "v%d:%s\n", v, hex.EncodeToString(tag))
			return nil
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
		Use:   "verify --key NAME --alg ALG --tag [vN:]HEX [FILE|-]",
		Short: "Check an HMAC; exit 0 if valid, 1 if invalid, 2 on any other error",
		Long: `Check that TAG is the HMAC of FILE (or standard input) under a key held by
the agent. The comparison is made inside the agent, in constant time.

A plain tag is checked against every live version of the key; a tag
written vN:HEX (as mac --versioned prints it), or a key named NAME@N,
against version N alone.

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
	tagText = strings.TrimSpace(tagText)
	if version, rest, ok := versionedTag(tagText); ok {
		if strings.Contains(key, "@") {
			return usageError("--tag %s names a version; --key %s names one too", tagText[:len(tagText)-len(rest)-1], key)
		}
		key, tagText = key+"@"+version, rest
	}
	var tag []byte
	if b64 {
		tag, err = base64.StdEncoding.DecodeString(tagText)
		if err != nil {
			return usageError("--tag is not valid base64: %v", err)
		}
	} else {
		tag, err = hex.DecodeString(tagText)
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
	_, _, err = macInput(cmd.Context(), c, key, a, in, true, tag)
	return err
}

// versionedTag splits "vN:TAG" into N and TAG.
func versionedTag(s string) (version, tag string, ok bool) {
	prefix, tag, found := strings.Cut(s, ":")
	if !found || len(prefix) < 2 || prefix[0] != 'v' {
		return "", "", false
	}
	for _, c := range prefix[1:] {
		if c < '0' || c > '9' {
			return "", "", false
		}
	}
	return prefix[1:], tag, true
}
