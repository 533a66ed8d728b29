package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/providers"
)

// maxImport bounds a key read for import; HMAC gains nothing from keys
// longer than a hash block, and providers refuse more than 4096 bytes.
const maxImport = 4096

func newKeysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Generate, import, rotate, retire, list and delete keys",
		Long: `Manage the agent's keys. Generating, importing and deleting are allowed only
to the agent's own user and root. Key bytes are never printed, and never
taken from the command line.`,
	}
	cmd.AddCommand(newKeysGenerateCommand(), newKeysImportCommand(), newKeysListCommand(), newKeysDeleteCommand(),
		newKeysRotateCommand(), newKeysRetireCommand())
	return cmd
}

func newKeysGenerateCommand() *cobra.Command {
	var provider string
	var length int
	cmd := &cobra.Command{
		Use:   "generate NAME [--length N] [--provider NAME]",
		Short: "Create a random key inside a provider",
		Example: `  hmac-agent keys generate webhook
  hmac-agent keys generate api-signing --length 64 --provider hsm`,
		Args: cobra.ExactArgs(1),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&provider, "provider", "", "the provider to create it in (default: the first configured)")
	cmd.Flags().IntVar(&length, "length", 0, "key length in bytes (default: the provider's: 32 for software, 64 for PKCS#11)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if length < 0 || length > maxImport {
			return usageError("--length must be 1 to %d bytes, not %d", maxImport, length)
		}
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		info, err := c.GenerateKey(cmd.Context(), provider, args[0], length)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "generated key %s in provider %s\n", info.Name, info.Provider)
		return nil
	}
	return cmd
}

func newKeysImportCommand() *cobra.Command {
	var provider, wrappedBy string
	cmd := &cobra.Command{
		Use:   "import NAME [FILE|-] [--provider NAME]",
		Short: "Import raw key bytes from a file or standard input",
		Long: `Import the raw bytes of FILE (or standard input, for "-" or no FILE) as a
new key. The bytes are sent to the agent and not kept by this command;
delete or lock away the source once the import succeeds.

With --wrapped-by, FILE holds a key wrapped (for PKCS#11: CKM_AES_KEY_WRAP_PAD,
RFC 5649) under a key the provider already holds; the provider unwraps it
inside itself, so the key's bytes never pass through the agent.`,
		Example: `  hmac-agent keys import webhook secret.bin
  head -c 32 /dev/urandom | hmac-agent keys import session -
  hmac-agent keys import webhook webhook.wrapped --provider hsm --wrapped-by kek`,
		Args: cobra.RangeArgs(1, 2),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&provider, "provider", "", "the provider to store it in (default: the first configured)")
	cmd.Flags().StringVar(&wrappedBy, "wrapped-by", "", "the input is wrapped under this key of the provider (name or URI)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		in, err := openInput(cmd, args[1:])
		if err != nil {
			return err
		}
		defer in.Close()
		secret, err := io.ReadAll(io.LimitReader(in, maxImport+1))
		defer clear(secret)
		if err != nil {
			return fmt.Errorf("cannot read key: %w", err)
		}
		if len(secret) > maxImport {
			return usageError("key is longer than %d bytes", maxImport)
		}
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		if wrappedBy != "" {
			info, err := c.ImportWrappedKey(cmd.Context(), provider, args[0], wrappedBy, secret)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported key %s (unwrapped by %s) into provider %s\n", info.Name, wrappedBy, info.Provider)
			return nil
		}
		info, err := c.ImportKey(cmd.Context(), provider, args[0], secret)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "imported key %s (%d bytes) into provider %s\n", info.Name, len(secret), info.Provider)
		return nil
	}
	return cmd
}

func newKeysListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list [--json]",
		Short:   "List keys: name, provider, algorithms, created; never key bytes",
		Example: `  hmac-agent keys list --json | jq -r '.[].name'`,
		Args:    cobra.NoArgs,
	}
	socket := socketFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		keys, err := c.Keys(cmd.Context())
		if err != nil {
			return err
		}
		if asJSON {
			if keys == nil {
				keys = []client.KeyInfo{}
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(keys)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPROVIDER\tKIND\tVERSION\tLIVE\tALGORITHMS\tCREATED")
		for _, k := range keys {
			created := "-"
			if !k.Created.IsZero() {
				created = k.Created.UTC().Format(time.RFC3339)
			}
			version, live := "-", "-"
			if k.Version > 0 {
				version, live = fmt.Sprint(k.Version), fmt.Sprint(liveVersions(k.Versions))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Name, k.Provider, k.Kind, version, live, algorithmList(k.Algorithms), created)
		}
		return tw.Flush()
	}
	return cmd
}

func algorithmList(algs []providers.Algorithm) string {
	names := make([]string, len(algs))
	for i, a := range algs {
		names[i] = a.String()
	}
	return strings.Join(names, ",")
}

func newKeysDeleteCommand() *cobra.Command {
	var provider string
	cmd := &cobra.Command{
		Use:     "delete NAME [--provider NAME]",
		Short:   "Destroy a key; this cannot be undone",
		Example: `  hmac-agent keys delete old-webhook`,
		Args:    cobra.ExactArgs(1),
	}
	socket := socketFlag(cmd)
	cmd.Flags().StringVar(&provider, "provider", "", "the provider holding it (default: where the name is found)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.DeleteKey(cmd.Context(), provider, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "deleted key %s\n", args[0])
		return nil
	}
	return cmd
}
