package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
)

func TestPolicyArrayForm(t *testing.T) {
	c, err := Load(write(t, softProvider+`
[[key]]
name = "webhook"
provider = "soft"
[[key.policy]]
units = ["webhook.service"]
executables = ["/usr/local/bin/webhook sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
operations = ["mac"]
[[key.policy]]
cgroups = ["/system.slice/docker-0123.scope"]
users = ["root", 33]
operations = ["verify"]
`))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := c.Keys[0].Policy.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if len(pol.Units) != 1 || pol.Units[0] != "webhook.service" || pol.Ops != agent.OpMAC ||
		len(pol.Executables) != 1 || pol.Executables[0].Path != "/usr/local/bin/webhook" || len(pol.Executables[0].SHA256) != 32 {
		t.Errorf("first rule %+v", pol)
	}
	if len(pol.Alternatives) != 1 {
		t.Fatalf("alternatives %+v", pol.Alternatives)
	}
	alt := pol.Alternatives[0]
	if len(alt.Cgroups) != 1 || alt.Cgroups[0] != "/system.slice/docker-0123.scope" || len(alt.UIDs) != 2 || alt.UIDs[1] != 33 || alt.Ops != agent.OpVerify {
		t.Errorf("second rule %+v", alt)
	}
}

// The single-table form keeps working, now with process conditions.
func TestPolicySingleTableWithUnits(t *testing.T) {
	c, err := Load(write(t, softProvider+`
[[key]]
name = "webhook"
provider = "soft"
[key.policy]
units = ["webhook.service", "getty@tty1.service", "session-4.scope"]
`))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := c.Keys[0].Policy.Resolve()
	if err != nil || len(pol.Units) != 3 || pol.Ops != agent.OpMAC|agent.OpVerify || len(pol.Alternatives) != 0 {
		t.Errorf("policy %+v, %v", pol, err)
	}
	if c.Keys[0].Policy.Empty() {
		t.Error("a policy naming only units reads as empty")
	}
}

func TestPolicyValidation(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(bin, link)
	withColour := softProvider + `
[[key]]
name = "a"
provider = "soft"
[[key.policy]]
units = ["webhook", "../x.service", "@.service"]
[[key.policy]]
operations = ["mac"]
[[key.policy]]
cgroups = ["system.slice", "/a/../b", "/"]
colour = "blue"
[[key]]
name = "b"
provider = "soft"
[key.policy]
executables = ["bin/tool", "` + link + `", "/usr/bin/x sha256:abcd", "/usr/bin/y sha256:"]
`
	_, err := Load(write(t, withColour))
	if err == nil {
		t.Fatal("accepted")
	}
	wantMentions(t, err,
		`policy[2].colour: unknown field`,
	)
	// Without the unknown field, every other rule is reported.
	_, err = Load(write(t, strings.Replace(withColour, "colour = \"blue\"\n", "", 1)))
	if err == nil {
		t.Fatal("accepted")
	}
	wantMentions(t, err,
		`key[0].policy: [0]: units: "webhook" is not a systemd service or scope name`,
		`units: "../x.service" is not`,
		`units: "@.service" is not`,
		`[1]: names no caller`,
		`[2]: cgroups: "system.slice" must be a clean absolute cgroup path`,
		`cgroups: "/a/../b" must be`,
		`cgroups: "/" would match every process`,
		`key[1].policy: executables: "bin/tool" must start with a clean absolute path`,
		`is a symbolic link to "`+bin+`"`,
		`"/usr/bin/x sha256:abcd": the digest must be sha256: and 64 hex digits`,
		`"/usr/bin/y sha256:": the digest must be`,
	)
}
