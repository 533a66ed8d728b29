package socket

import (
	"strings"
	"testing"
)

const hybridCgroup = `12:pids:/system.slice/webhook.service
9:name=systemd:/system.slice/webhook.service
1:cpu:/
0::/system.slice/webhook.service
`

func TestSystemdCgroup(t *testing.T) {
	tests := []struct {
		name, text string
		hierarchy  int
		want       string
		ok         bool
	}{
		{"v2", "0::/system.slice/webhook.service\n", hierarchyUnified, "/system.slice/webhook.service", true},
		{"v1 name=systemd", hybridCgroup, hierarchyNamedSystemd, "/system.slice/webhook.service", true},
		{"hybrid read as v2", hybridCgroup, hierarchyUnified, "/system.slice/webhook.service", true},
		{"named among others", "3:cpu,name=systemd:/a.service\n", hierarchyNamedSystemd, "/a.service", true},
		{"no such hierarchy", "1:cpu:/\n", hierarchyNamedSystemd, "", false},
		{"no final newline", "0::/x", hierarchyUnified, "", false},
		{"empty", "", hierarchyUnified, "", false},
		{"relative path", "0::x\n", hierarchyUnified, "", false},
		{"hierarchy twice", "0::/user.slice\n0::/system.slice/webhook.service\n", hierarchyUnified, "", false},
		{"name=systemd twice", "9:name=systemd:/a\n10:name=systemd:/system.slice/webhook.service\n", hierarchyNamedSystemd, "", false},
		// A cgroup name cannot hold a newline, but if one did, the line
		// it makes must not be believed.
		{"injected line", "0::/user.slice/x\n9:name=systemd:/system.slice/webhook.service\n9:name=systemd:/user.slice\n", hierarchyNamedSystemd, "", false},
		{"garbage line", "0::/a\nhello\n", hierarchyUnified, "", false},
		{"id not a number", "x::/a\n", hierarchyUnified, "", false},
		{"NUL in path", "0::/a\x00b\n", hierarchyUnified, "", false},
	}
	for _, tt := range tests {
		got, ok := systemdCgroup([]byte(tt.text), tt.hierarchy)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: got %q, %v; want %q, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestUnitAndContainer(t *testing.T) {
	id := strings.Repeat("ab", 32)
	tests := []struct{ cgroup, unit, container string }{
		{"/system.slice/webhook.service", "webhook.service", ""},
		{"/system.slice/webhook.service/worker", "webhook.service", ""},
		{"/system.slice/getty@tty1.service", "getty@tty1.service", ""},
		{"/user.slice/user-1000.slice/session-4.scope", "session-4.scope", ""},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/webhook.service", "user@1000.service", ""},
		{"/", "", ""},
		{"/system.slice", "", ""},
		{"/custom/webhook.service", "", ""},
		{"/system.slice/docker-" + id + ".scope", "docker-" + id + ".scope", id},
		{"/docker/" + id, "", id},
		{"/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope", "cri-containerd-" + id + ".scope", id},
		{"/system.slice/bad name.service", "", ""},
	}
	for _, tt := range tests {
		if u := unitOf(tt.cgroup); u != tt.unit {
			t.Errorf("unitOf(%q) = %q, want %q", tt.cgroup, u, tt.unit)
		}
		if c := containerOf(tt.cgroup); c != tt.container {
			t.Errorf("containerOf(%q) = %q, want %q", tt.cgroup, c, tt.container)
		}
	}
}

// FuzzCgroupFile feeds /proc/PID/cgroup texts, whose paths are names
// whoever may create cgroups chose: the parser must not panic, and what
// it accepts must be one absolute path on one line.
func FuzzCgroupFile(f *testing.F) {
	f.Add([]byte(hybridCgroup))
	f.Add([]byte("0::/system.slice/webhook.service\n"))
	f.Add([]byte("0::/a\n0::/b\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		for _, h := range []int{hierarchyUnified, hierarchyNamedSystemd} {
			path, ok := systemdCgroup(text, h)
			if !ok {
				if path != "" {
					t.Fatalf("unknown cgroup with a path %q", path)
				}
				continue
			}
			if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "\n\x00") {
				t.Fatalf("accepted path %q", path)
			}
			if u := unitOf(path); u != "" && !ValidUnitName(u) {
				t.Fatalf("unit %q of %q is not a unit name", u, path)
			}
			if c := containerOf(path); c != "" && !isHex64(c) {
				t.Fatalf("container %q", c)
			}
		}
	})
}
