package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newStatusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the running agent's version, uptime, providers and keys",
		Example: `  hmac-agent status
  hmac-agent status --json | jq .providers`,
		Args: cobra.NoArgs,
	}
	socket := socketFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := dial(cmd, *socket)
		if err != nil {
			return err
		}
		defer c.Close()
		st, err := c.Status(cmd.Context())
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		fmt.Fprintf(out, "agent:       hmac-agent %s (pid %d)\n", st.Version, st.PID)
		fmt.Fprintf(out, "socket:      %s\n", c.Path())
		fmt.Fprintf(out, "uptime:      %s\n", (time.Duration(st.Uptime) * time.Second).String())
		fmt.Fprintf(out, "keys:        %d\n", st.Keys)
		fmt.Fprintf(out, "connections: %d\n", st.Connections)
		fmt.Fprintf(out, "contexts:    %d\n", st.Contexts)
		fmt.Fprintln(out, "providers:")
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		for _, p := range st.Providers {
			health := "ok"
			if !p.Healthy {
				health = "FAILING: " + p.Error
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d keys\t%s\n", p.Name, p.Kind, p.Keys, health)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(st.Peers) == 0 {
			return nil
		}
		// Another user sees only their own uid's connections.
		fmt.Fprintln(out, "peers:")
		tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		for _, p := range st.Peers {
			where := p.Unit
			if where == "" {
				where = p.Cgroup
			}
			fmt.Fprintf(tw, "  pid %d\tuid %d\tgid %d\t%s\t%s\t%d contexts\n", p.PID, p.UID, p.GID, orUnknown(where), orUnknown(p.Executable), p.Contexts)
		}
		return tw.Flush()
	}
	return cmd
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "hmac-agent %s\n", versionString())
		},
	}
}
