package socket

import (
	"bytes"
	"strconv"
	"strings"
)

// Which line of /proc/PID/cgroup names a process's cgroup for policies:
// the v1 name=systemd hierarchy where the system has one (legacy and
// hybrid systemd), else the cgroup v2 tree (the "0::" line). The choice is
// the agent's, from its own /proc/self/cgroup, never the peer's.
const (
	hierarchyUnified = iota // 0::PATH
	hierarchyNamedSystemd
)

// systemdCgroup returns the path of the chosen hierarchy in the text of a
// /proc/PID/cgroup file. The text is the kernel's, but a path is a
// directory name that whoever may create cgroups chose; anything unusual
// (a line that does not parse, a hierarchy listed twice) makes the cgroup
// unknown rather than guessed at.
func systemdCgroup(text []byte, hierarchy int) (string, bool) {
	if len(text) == 0 || text[len(text)-1] != '\n' {
		return "", false
	}
	var found string
	var have bool
	seen := map[string]bool{}
	for line := range bytes.SplitSeq(text[:len(text)-1], []byte("\n")) {
		id, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(id) == 0 {
			return "", false
		}
		if _, err := strconv.ParseUint(string(id), 10, 32); err != nil {
			return "", false
		}
		controllers, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok || len(path) == 0 || path[0] != '/' || bytes.IndexByte(path, 0) >= 0 {
			return "", false
		}
		if seen[string(id)] {
			return "", false
		}
		seen[string(id)] = true
		var match bool
		switch hierarchy {
		case hierarchyUnified:
			match = string(id) == "0" && len(controllers) == 0
		case hierarchyNamedSystemd:
			match = isNamedSystemd(controllers)
		}
		if !match {
			continue
		}
		if have {
			return "", false
		}
		found, have = string(path), true
	}
	return found, have
}

func isNamedSystemd(controllers []byte) bool {
	for c := range bytes.SplitSeq(controllers, []byte(",")) {
		if string(c) == "name=systemd" {
			return true
		}
	}
	return false
}

// unitOf returns the systemd unit a cgroup path shows, as systemd's own
// sd_pid_get_unit does: the first component that is not a slice, if it is
// a service or a scope. A user's own services (under user@UID.service)
// are that unit, so a user cannot name themselves after a system service.
func unitOf(cgroup string) string {
	for c := range strings.SplitSeq(cgroup, "/") {
		if c == "" || strings.HasSuffix(c, ".slice") {
			continue
		}
		if (strings.HasSuffix(c, ".service") || strings.HasSuffix(c, ".scope")) && ValidUnitName(c) {
			return c
		}
		return ""
	}
	return ""
}

// ValidUnitName reports whether s is a systemd service or scope name:
// "webhook.service", "getty@tty1.service", "session-4.scope".
func ValidUnitName(s string) bool {
	var stem string
	switch {
	case strings.HasSuffix(s, ".service"):
		stem = strings.TrimSuffix(s, ".service")
	case strings.HasSuffix(s, ".scope"):
		stem = strings.TrimSuffix(s, ".scope")
	default:
		return false
	}
	if stem == "" || len(s) > 255 || stem[0] == '@' {
		return false
	}
	for i := 0; i < len(stem); i++ {
		c := stem[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(":-_.\\@", c) >= 0) {
			return false
		}
	}
	return true
}

// containerOf returns the container id a cgroup path shows (Docker,
// containerd, CRI-O and Podman name a container's cgroup after its
// 64-hex-digit id), or "".
func containerOf(cgroup string) string {
	parts := strings.Split(cgroup, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		c := strings.TrimSuffix(parts[i], ".scope")
		for _, prefix := range []string{"docker-", "cri-containerd-", "crio-", "libpod-"} {
			c = strings.TrimPrefix(c, prefix)
		}
		if isHex64(c) {
			return c
		}
	}
	return ""
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}
