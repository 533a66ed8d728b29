package config

import (
	"strings"
	"testing"
	"time"
)

func TestVersionSettings(t *testing.T) {
	c, err := Load(write(t, `version_refresh = "500ms"`+softProvider+`
[[key]]
name = "webhook"
provider = "soft"
verify_grace = "72h"
rotate_every = "720h"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.VersionRefresh.Duration != 500*time.Millisecond || c.Keys[0].VerifyGrace.Duration != 72*time.Hour || c.Keys[0].RotateEvery.Duration != 720*time.Hour {
		t.Errorf("decoded %+v %+v", c.VersionRefresh, c.Keys[0])
	}

	_, err = Load(write(t, `version_refresh = "1ms"`+softProvider+`
[[key]]
name = "a"
provider = "soft"
verify_grace = "-1h"
rotate_every = "1s"
[[key]]
name = "b"
provider = "soft"
rotate_every = "-1s"
`))
	if err == nil {
		t.Fatal("invalid version settings accepted")
	}
	wantMentions(t, err,
		"version_refresh: 1ms is out of range; give 100ms to 1m0s",
		"key[0].verify_grace: must not be negative",
		"key[0].rotate_every: 1s is too often; give 1m0s or more",
		"key[1].rotate_every: must not be negative",
	)
}

func TestConfiguredVersionObject(t *testing.T) {
	_, err := Load(write(t, softProvider+`
[[key]]
name = "legacy"
provider = "soft"
object = "webhook@1"
[[key]]
name = "bad"
provider = "soft"
object = "webhook@01"
[[key]]
name = "scheduled"
provider = "soft"
object = "webhook@2"
rotate_every = "24h"
`))
	if err == nil {
		t.Fatal("invalid objects accepted")
	}
	wantMentions(t, err,
		`key[1].object: "webhook@01": want NAME or NAME@N`,
		`key[2].object: "webhook@2" names one version; verify_grace and rotate_every belong`,
	)
	if strings.Contains(err.Error(), "key[0]") {
		t.Errorf("webhook@1 refused: %v", err)
	}
}
