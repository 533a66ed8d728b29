package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hmac-agent/hmac-agent/agent/status"
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
			fmt.Fprintf(tw, "  %s\t%s\t%d keys\t%s\n", p.Name, p.Kind, p.Keys, health(p))
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

// health is a provider's line as the agent's background probes found it,
// with its age: "ok, checked 2s ago", or "FAILING since 10:02:03 (45s):
// the TPM does not answer; 12 requests failed; checked 1s ago".
func health(p status.Provider) string {
	checked := "not checked yet"
	if !p.Checked.IsZero() {
		checked = "checked " + ago(p.CheckAge) + " ago"
	}
	if p.Healthy {
		return "ok, " + checked
	}
	s := "FAILING"
	if !p.DownSince.IsZero() {
		since := time.Since(p.DownSince)
		s += " since " + p.DownSince.Local().Format(time.TimeOnly) + " (" + ago(since.Seconds()) + ")"
	}
	s += ": " + p.Error
	if p.FailedRequests > 0 {
		s += fmt.Sprintf("; %d requests failed", p.FailedRequests)
	}
	return s + "; " + checked
}

// ago rounds seconds for a person: "0.4s", "2s", "3m5s".
func ago(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	if d < time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
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
