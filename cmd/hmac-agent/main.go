// Command hmac-agent is a local daemon that keeps HMAC keys in a PKCS#11
// token, a TPM or a software keystore and computes HMACs for clients over a
// Unix socket, and the command-line client for it.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// exitError carries an exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks bad arguments: exit status 2.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "hmac-agent",
		Short: "Keep HMAC keys in hardware; compute HMACs for local clients",
		Long: `hmac-agent holds HMAC keys in a PKCS#11 token, a TPM 2.0 or a software
keystore and computes HMACs for clients over a Unix socket, so that no
application holds the key. Clients find the socket through HMAC_AGENT_SOCK,
as ssh clients find ssh-agent through SSH_AUTH_SOCK.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError("%v (see %s --help)", err, cmd.CommandPath())
	})
	root.AddCommand(newServeCommand(), newKeysCommand(), newMACCommand(), newVerifyCommand(),
		newStatusCommand(), newVersionCommand())
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes a word that names no subcommand an error
// (exit 2, listing the commands) for cmd and every command under it that
// has subcommands. Left to cobra, "hmac-agent keys rotat" prints the help
// of keys and exits 0, and a script believes it did something. Such a
// command given no word at all prints its help.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	if !cmd.HasSubCommands() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		var names []string
		for _, sub := range cmd.Commands() {
			if sub.IsAvailableCommand() {
				names = append(names, sub.Name())
			}
		}
		return usageError("unknown command %q for %q (commands: %s)", args[0], cmd.CommandPath(), strings.Join(names, ", "))
	}
	for _, sub := range cmd.Commands() {
		refuseUnknownSubcommands(sub)
	}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "hmac-agent: %v\n", err)
	if ee, ok := errors.AsType[*exitError](err); ok {
		return ee.code
	}
	return 1
}
