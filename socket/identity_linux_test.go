//go:build linux

package socket

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
)

// BenchmarkIdentityOf measures reading a peer's identity alone, on a
// socket pair whose peer is this process.
func BenchmarkIdentityOf(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pid := int32(os.Getpid())
	for _, bc := range []struct {
		name string
		need agent.IdentityNeed
	}{{"identity", agent.NeedIdentity}, {"digest", agent.NeedDigest}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if id, err := identityOf(fds[0], pid, 0, bc.need, DefaultLimits.HashTimeout); id == nil || id.Executable == "" {
					b.Fatalf("identity %+v: %v", id, err)
				}
			}
		})
	}
}

// TestIdentityOfSelf reads this process's identity through a socket pair
// and checks it against what the process knows of itself.
func TestIdentityOfSelf(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := CheckIdentitySupport(true, true); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	self, _ := os.Executable()
	id, err := identityOf(fds[0], int32(os.Getpid()), uint32(os.Getuid()), agent.NeedDigest, DefaultLimits.HashTimeout)
	if err != nil || id == nil || id.Executable != self || id.Cgroup == "" || len(id.ExecutableSHA256) != 32 {
		t.Fatalf("identity %+v (%v), want exe %s with a cgroup and digest", id, err, self)
	}
	// A peer in a pid namespace the agent cannot see has pid 0 in
	// SO_PEERCRED: no identity.
	if id, _ := identityOf(fds[0], 0, 0, agent.NeedIdentity, DefaultLimits.HashTimeout); id != nil {
		t.Errorf("pid 0 gave identity %+v", id)
	}
}

func TestHidePID(t *testing.T) {
	for _, tt := range []struct{ info, want string }{
		{"22 27 0:21 / /proc rw,relatime - proc proc rw\n", ""},
		{"22 27 0:21 / /proc rw,relatime - proc proc rw,hidepid=invisible\n", "invisible"},
		{"22 27 0:21 / /proc rw,relatime - proc proc rw,hidepid=2,gid=4\n", "2"},
		{"22 27 0:21 / /proc rw,relatime - proc proc rw,hidepid=0\n", ""},
		{"30 27 0:21 / /other/proc rw - proc proc rw,hidepid=2\n", ""},
	} {
		if got := hidePIDOf(tt.info); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.info, got, tt.want)
		}
	}
}
