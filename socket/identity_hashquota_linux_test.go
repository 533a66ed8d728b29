//go:build linux

package socket

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestBlockedReadsBounded: reads that never return are left behind at
// their deadline, each keeping its uid's turn, and no more than
// maxOutstandingReads of them exist: past that the agent refuses to begin
// another rather than pile up threads and files. Once they return,
// hashing goes on.
func TestBlockedReadsBounded(t *testing.T) {
	oldQuota, oldCache := hashing, digests
	hashing, digests = newHashQuota(2, 4), newDigestCache(4, 16)
	t.Cleanup(func() { hashing, digests = oldQuota, oldCache })
	quota := hashing

	// This process reads the file as the agent would: its reads stall.
	fs := MountStalledFS(t, 1)
	path := fs.Exe(0)
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	content := append(bin, "exe0"...)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	held := func(n int) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); fs.HeldReads() != n; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%d reads held, want %d", fs.HeldReads(), n)
			}
		}
	}
	const timeout = 50 * time.Millisecond
	unavailable := func(uid uint32, want string) {
		t.Helper()
		sum, refused, err := digestOf(path, &st, uid, timeout)
		if !errors.Is(err, providers.ErrUnavailable) || !strings.Contains(err.Error(), want) {
			t.Fatalf("uid %d: digest %x, refused %q, err %v; want ErrUnavailable saying %q", uid, sum, refused, err, want)
		}
	}
	for uid := uint32(1); uid <= 4; uid++ {
		unavailable(uid, "not hashed within 50ms")
	}
	held(4)
	if len(quota.reads) != 4 || len(quota.slots) != 0 {
		t.Fatalf("%d reads outstanding, %d slots held; want 4, 0", len(quota.reads), len(quota.slots))
	}
	// A uid whose read is blocked hashes nothing more, and is told so at
	// once rather than at its deadline.
	start := time.Now()
	unavailable(1, "earlier read of an executable of uid 1")
	if d := time.Since(start); d >= timeout {
		t.Errorf("a uid with a blocked read waited %s to be told", d)
	}
	// A fifth uid finds every read taken.
	unavailable(5, "4 reads of executables have not returned")
	held(4)

	fs.Release()
	// Each read left behind is over once its uid's use is dropped, under
	// the quota's lock (which orders its last steps before this test's).
	busy := func() int {
		quota.mu.Lock()
		defer quota.mu.Unlock()
		n := 0
		for _, u := range quota.uids {
			n += u.users
		}
		return n
	}
	for end := time.Now().Add(10 * time.Second); busy() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d reads outstanding after they were let go", len(quota.reads))
		}
	}
	want := sha256.Sum256(content)
	for uid := uint32(1); uid <= 5; uid++ {
		// Through FUSE, a read at a time: no deadline to speak of.
		sum, refused, err := digestOf(path, &st, uid, time.Minute)
		if err != nil || refused != "" || !bytes.Equal(sum, want[:]) {
			t.Errorf("uid %d after the reads returned: %x %q %v", uid, sum, refused, err)
		}
	}
	quota.mu.Lock()
	defer quota.mu.Unlock()
	for uid, u := range quota.uids {
		if u.users != 0 || u.stalled || len(u.turn) != 0 {
			t.Errorf("uid %d left with %d users, stalled %v, turn %d", uid, u.users, u.stalled, len(u.turn))
		}
	}
}

// TestDigestCachePerUID: one uid churning versions evicts only its own
// least recently used entries, and the cache never holds more than its
// total.
func TestDigestCachePerUID(t *testing.T) {
	c := newDigestCache(3, 8)
	version := func(i int) fileVersion { return fileVersion{dev: 1, ino: uint64(i), size: 10} }
	sum := []byte("victim's digest")
	c.put(0, version(0), sum)
	c.put(0, version(1), []byte("another"))
	for i := range 1000 {
		c.put(65534, version(100+i), []byte("churn"))
		if i == 500 {
			c.get(0, version(0))
		}
	}
	if got := c.get(0, version(0)); !bytes.Equal(got, sum) {
		t.Errorf("the victim's entry is gone after another uid's churn: %q", got)
	}
	if n := len(c.uids[65534].m); n != 3 {
		t.Errorf("the churning uid holds %d entries, want its bound 3", n)
	}
	if c.get(65534, version(100+996)) != nil || c.get(65534, version(100+999)) == nil {
		t.Error("the churning uid kept an old entry over its most recent")
	}
	// A crowd of uids fills the cache: it stays at its total, and those
	// holding the most give way first.
	for uid := uint32(1); uid <= 20; uid++ {
		c.put(uid, version(1), []byte("crowd"))
		if c.entries > 8 {
			t.Fatalf("%d entries, bound 8", c.entries)
		}
	}
	n := 0
	for _, u := range c.uids {
		n += len(u.m)
	}
	if n != c.entries || n != 8 {
		t.Errorf("%d entries counted, %d held; want 8", c.entries, n)
	}
}
