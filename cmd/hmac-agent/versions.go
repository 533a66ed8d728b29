package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/hmac-agent/hmac-agent/providers"
)

func newKeysRotateCommand() *cobra.Command {
	var provider string
	var length int
	cmd := &cobra.Command{
		Use:   "rotate NAME [FILE|-] [--length N] [--provider NAME]",
		Short: "Add a version to a key and make it current; print its number",
		Long: `Add a new version to key NAME and make it current: generated inside the
provider, or imported from FILE (or standard input, for "-"). New tags are
made with it at once in this agent, and in other agents sharing the
provider within their refresh interval; tags of the versions before it
keep verifying until they are retired or pass the key's verify_grace.
Prints the new version's number alone.`,
		Example: `  hmac-agent keys rotate webhook
  hmac-agent keys rotate webhook new-secret.bin
  head -c 32 /dev/urandom | hmac-agent keys rotate session -`,
		Args: cobra.RangeArgs(1, 2),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&provider, "provider", "", "the provider holding it (default: where the name is found)")
	cmd.Flags().IntVar(&length, "length", 0, "length in bytes of a generated version (default: the provider's)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if length < 0 || length > maxImport {
			return usageError("--length must be 1 to %d bytes, not %d", maxImport, length)
		}
		var secret []byte // nil: generate
		if len(args) == 2 {
			if cmd.Flags().Changed("length") {
				return usageError("--length is for a generated version, not one imported from %s", args[1])
			}
			in, err := openInput(cmd, args[1:])
			if err != nil {
				return err
			}
			defer in.Close()
			secret, err = io.ReadAll(io.LimitReader(in, maxImport+1))
			defer clear(secret)
			if err != nil {
				return fmt.Errorf("cannot read key: %w", err)
			}
			if len(secret) > maxImport {
				return usageError("key is longer than %d bytes", maxImport)
			}
			if secret == nil {
				secret = []byte{}
			}
		}
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		info, err := c.RotateKey(cmd.Context(), provider, args[0], secret, length)
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), info.Version)
		return nil
	}
	return cmd
}

func newKeysRetireCommand() *cobra.Command {
	var provider string
	var version int
	var destroy bool
	cmd := &cobra.Command{
		Use:   "retire NAME --version N [--destroy] [--provider NAME]",
		Short: "Stop a version of a key verifying; with --destroy delete it",
		Long: `Stop version N of key NAME verifying, at once in this agent and in other
agents sharing the provider within their refresh interval. With --destroy
its object is deleted from the provider too, which cannot be undone.
Retiring the current version is refused: rotate first.`,
		Example: `  hmac-agent keys retire webhook --version 1
  hmac-agent keys retire webhook --version 1 --destroy`,
		Args: cobra.ExactArgs(1),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&provider, "provider", "", "the provider holding it (default: where the name is found)")
	cmd.Flags().IntVar(&version, "version", 0, "the version to retire (required)")
	cmd.Flags().BoolVar(&destroy, "destroy", false, "delete the version's object from the provider too")
	cmd.MarkFlagRequired("version")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if version < 1 {
			return usageError("--version must be 1 or more, not %d", version)
		}
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.RetireVersion(cmd.Context(), provider, args[0], version, destroy); err != nil {
			return err
		}
		what := "retired"
		if destroy {
			what = "destroyed"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s version %d of key %s\n", what, version, args[0])
		return nil
	}
	return cmd
}

// liveVersions counts the versions that verify.
func liveVersions(vs []providers.VersionInfo) int {
	n := 0
	for _, v := range vs {
		if v.State == providers.VersionCurrent || v.State == providers.VersionPrevious {
			n++
		}
	}
	return n
}
