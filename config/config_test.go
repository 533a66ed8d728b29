package config

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// softProvider is a software provider table for configurations whose
// subject is elsewhere.
const softProvider = `
[[provider]]
name = "soft"
type = "software"
path = "/var/lib/hmac-agent/keys"
`

// wantMentions fails the test for each of wants that the error from
// loading a configuration does not mention: a broken config is reported
// with one message per broken rule.
func wantMentions(t *testing.T, err error, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadValid(t *testing.T) {
	c, err := Load(write(t, `
socket = "/run/hmac-agent/agent.sock"
shutdown_grace = "5s"
[limits]
max_contexts_per_connection = 100
max_queued_bytes = 1048576
hash_timeout = "3s"
[log]
level = "debug"
format = "json"
[[provider]]
name = "soft"
type = "software"
path = "/var/lib/hmac-agent/keys"
[[provider]]
name = "hsm"
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "agent"
pin_env = "PIN"
session_key_copies = false
timeout = "2s"
[[key]]
name = "webhook"
provider = "soft"
object = "webhook-2026"
[key.policy]
users = ["root", 1234]
groups = [0]
operations = ["verify"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.SocketPath() != "/run/hmac-agent/agent.sock" || c.ShutdownGrace.Seconds() != 5 || c.Limits.MaxContextsPerConnection != 100 || c.Limits.MaxQueuedBytes != 1<<20 || c.Limits.HashTimeout.Seconds() != 3 {
		t.Errorf("decoded %+v", c)
	}
	soft, okSoft := c.Providers[0].Settings.(*software.Settings)
	hsm, okHSM := c.Providers[1].Settings.(*pkcs11.Settings)
	if len(c.Providers) != 2 || !okSoft || !okHSM {
		t.Fatalf("providers decoded as %+v", c.Providers)
	}
	if soft.Path != "/var/lib/hmac-agent/keys" || hsm.Module != "/usr/lib/softhsm/libsofthsm2.so" || hsm.TokenLabel != "agent" || hsm.PINEnv != "PIN" {
		t.Errorf("settings decoded as %+v, %+v", soft, hsm)
	}
	if hsm.SessionKeyCopies == nil || *hsm.SessionKeyCopies {
		t.Errorf("session_key_copies decoded as %v", hsm.SessionKeyCopies)
	}
	if c.Providers[0].Timeout.Duration != 0 || c.Providers[1].Timeout.Seconds() != 2 {
		t.Errorf("timeout decoded as %v, %v", c.Providers[0].Timeout, c.Providers[1].Timeout)
	}
	pol, err := c.Keys[0].Policy.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if len(pol.UIDs) != 2 || pol.UIDs[0] != 0 || pol.UIDs[1] != 1234 || pol.GIDs[0] != 0 || pol.Ops != agent.OpVerify {
		t.Errorf("policy %+v", pol)
	}
}

func TestValidationReportsEveryRule(t *testing.T) {
	_, err := Load(write(t, `
socket = "relative.sock"
colour = "blue"
[limits]
hash_timeout = "2m"
[log]
level = "loud"
[[provider]]
name = "a"
type = "software"
timeout = "1s"
[[provider]]
name = "a"
type = "pkcs11"
sessions = -2
timeout = "-1s"
[[provider]]
name = "t"
type = "tpm"
device = "/dev/tpmrm0"
state_dir = "/var/lib/hmac-agent/tpm"
timeout = "1ms"
[[provider]]
type = "quantum"
[[key]]
name = "-bad"
provider = "nowhere"
object = "x"
uri = "pkcs11:object=x"
[key.policy]
users = ["no-such-user-xyz"]
operations = ["sign"]
`))
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	wantMentions(t, err,
		"colour: unknown field",
		"socket: must be an absolute path",
		"limits.hash_timeout: must be at most 1m0s",
		"log.level: must be debug",
		"provider[0].path: required",
		"provider[1].name: \"a\" is also the name of provider[0]",
		"provider[1].module: required",
		"provider[1].token:",
		"provider[1].pin_file:",
		"provider[1].sessions: must not be negative",
		"provider[0].timeout: applies to pkcs11 and tpm providers only",
		"provider[1].timeout: must not be negative",
		"provider[2].timeout: 1ms is too short",
		"provider[3].name: required",
		"provider[3].type: unknown provider type \"quantum\"",
		"key[0].name:",
		"key[0].provider: no provider named \"nowhere\"",
		"key[0].uri: give object or uri, not both",
		"key[0].policy: users: \"no-such-user-xyz\"",
		"operations: unknown operation \"sign\"",
	)
}

func TestDefault(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/state")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := c.Providers[0].Settings.(*software.Settings); !ok || s.Path != "/state/hmac-agent/keys" || c.SocketPath() != "/run/user/1000/hmac-agent/agent.sock" {
		t.Errorf("default %+v, socket %s", c.Providers[0], c.SocketPath())
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got, want := c.SocketPath(), filepath.Join("/tmp", "hmac-agent-"+itoa(os.Getuid()), "agent.sock"); got != want {
		t.Errorf("socket without XDG_RUNTIME_DIR = %s, want %s", got, want)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestPolicyWithOperationsButNobody: a policy that lists operations but
// no users or groups would deny everyone, the owner included; it is a
// configuration error that says so, for a key and for default_policy.
func TestPolicyWithOperationsButNobody(t *testing.T) {
	_, err := Load(write(t, softProvider+`
[default_policy]
operations = ["mac"]
[[key]]
name = "webhook"
provider = "soft"
[key.policy]
operations = ["verify"]
`))
	if err == nil {
		t.Fatal("a policy naming operations but nobody was accepted")
	}
	wantMentions(t, err,
		"default_policy: names no caller",
		"key[0].policy: names no caller",
	)
	// Naming a user or a group alone is enough.
	for _, who := range []string{`users = [0]`, `groups = [0]`} {
		if _, err := Load(write(t, softProvider+`
[[key]]
name = "webhook"
provider = "soft"
[key.policy]
`+who+`
operations = ["verify"]
`)); err != nil {
			t.Errorf("policy with %s: %v", who, err)
		}
	}
}

// TestProviderFieldsByKind: each [[provider]] table is read by its own
// kind, so a field of another kind is unknown there and named with the
// table's index, even when another table of that kind has it.
func TestProviderFieldsByKind(t *testing.T) {
	_, err := Load(write(t, `
[[provider]]
name = "hsm"
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "agent"
pin_file = "/etc/hmac-agent/pin"
[[provider]]
name = "soft"
type = "software"
path = "/var/lib/hmac-agent/keys"
module = "/usr/lib/softhsm/libsofthsm2.so"
[[provider]]
name = "tpm"
type = "tpm"
device = "/dev/tpmrm0"
state_dir = "/var/lib/hmac-agent/tpm"
slot = 4
[[provider]]
name = "typo"
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "agent"
pin_file = "/etc/hmac-agent/pin"
sessions = "eight"
`))
	if err == nil {
		t.Fatal("fields of another kind accepted")
	}
	wantMentions(t, err,
		"provider[1].module: unknown field for a software provider",
		"provider[2].slot: unknown field for a tpm provider",
		"provider[3]: ",
	)
	if strings.Contains(err.Error(), "provider[0]") {
		t.Errorf("the valid pkcs11 table is blamed:\n%v", err)
	}
}

// TestOpenByKind: a loaded table opens the provider of its kind, which
// reports the type the registry knows it by.
func TestOpenByKind(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	c, err := Load(write(t, `
[[provider]]
name = "soft"
type = "software"
path = "`+dir+`"
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Providers[0].Open(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Name() != "soft" || p.Kind() != c.Providers[0].Type {
		t.Errorf("opened %s of kind %s", p.Name(), p.Kind())
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the keystore was not made at the configured path: %v", err)
	}
}

// TestHashTimeoutBounds: limits.hash_timeout may be left out (the
// default), set up to MaxHashTimeout, and no more nor negative.
func TestHashTimeoutBounds(t *testing.T) {
	for _, tt := range []struct {
		value, wantErr string
	}{
		{`"30s"`, ""},
		{`"1m"`, ""},
		{`"-1s"`, "limits.hash_timeout: must not be negative"},
		{`"61s"`, "limits.hash_timeout: must be at most 1m0s"},
	} {
		_, err := Load(write(t, "[limits]\nhash_timeout = "+tt.value+"\n[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = \"/var/lib/hmac-agent/keys\"\n"))
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("hash_timeout = %s: %v", tt.value, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("hash_timeout = %s: %v, want %q", tt.value, err, tt.wantErr)
		}
	}
}

// TestLowerFloodPriority: on unless the file turns it off.
func TestLowerFloodPriority(t *testing.T) {
	for _, c := range []struct {
		line string
		want bool
	}{{"", true}, {"lower_flood_priority = true\n", true}, {"lower_flood_priority = false\n", false}} {
		cfg, err := Load(write(t, c.line+softProvider))
		if err != nil {
			t.Fatalf("%q: %v", c.line, err)
		}
		if got := cfg.FloodPriority(); got != c.want {
			t.Errorf("%q: FloodPriority %v, want %v", c.line, got, c.want)
		}
	}
}
