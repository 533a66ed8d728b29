//go:build linux

package socket

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/providers"
)

// A policy naming an executable's digest makes the agent read and hash the
// caller's binary at connect: work a caller chooses the size of, and can
// ask for again and again (a new copy, or a touch, is a new file version),
// from a file it may serve itself (a FUSE mount of its own, whose reads
// need never return). What one uid can make the agent do is bounded here:
//
//   - a binary over maxHashedExecutable is not hashed at all;
//   - a uid's connections hash one at a time, and the agent hashes at most
//     maxConcurrentHashes binaries at once, so one uid holds at most one
//     of those turns and others' connections still find one;
//   - each uid has a credit of hashCredit bytes, refilled at
//     hashCredit per hashRefill: a binary it would take past its credit is
//     not hashed;
//   - a hash, from the wait for its turn to the end of its read, has until
//     the server's Limits.HashTimeout. Past it the connection is refused.
//     A read cannot be interrupted, so one still blocked at its deadline
//     is left to return in its own time: it gives up its hashing slot but
//     keeps its uid's turn, so that uid hashes nothing else until the read
//     returns (its other connections are refused at once), and at most
//     maxOutstandingReads reads, running or left blocked, exist in the
//     agent: past that, new hashes are refused until one returns.
//
// A digest found in the cache costs nothing and is not counted, so a
// service whose processes all run the same binary hashes it once per
// version. A binary not hashed for its size or its uid's credit has no
// digest, and every rule naming a digest denies its caller; the reason
// shows in the agent's log and audit lines with the caller's identity.

// maxHashedExecutable bounds the bytes hashed for one executable: a caller
// must not make the agent read a huge file. A larger binary has no digest,
// so rules naming one deny it.
const maxHashedExecutable = 256 << 20

// maxConcurrentHashes bounds the binaries hashed at once in the agent.
const maxConcurrentHashes = 2

// maxOutstandingReads bounds the reads of executables that have not
// returned, whether within their deadline or left blocked past it. Each
// left blocked holds an OS thread (the Go runtime makes another for the
// rest of the agent, and dies at 10,000), an open file, a goroutine and
// a 32 KiB buffer, and a caller with a range of subordinate uids can
// leave one per uid: this is what bounds them.
const maxOutstandingReads = 16

// hashCredit and hashRefill: a uid may have the agent hash a binary of
// the largest size at once, and that much again each minute.
var (
	hashCredit int64 = maxHashedExecutable
	hashRefill       = time.Minute
)

// hashedBytes counts the bytes the agent has read to hash executables.
var hashedBytes atomic.Int64

// fileVersion names one version of a file: a write changes its ctime,
// which no one can set back.
type fileVersion struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

func versionOf(st *unix.Stat_t) fileVersion {
	return fileVersion{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
}

// digestOf returns the SHA-256 of the binary behind exe (/proc/PID/exe,
// which opens the file the process runs even if its path was replaced),
// if it is the file version st describes, for a caller of uid.
//
// It returns no digest and why not (refused) when the binary is over
// maxHashedExecutable or uid has had the agent hash more than its credit
// lately, and no digest and no reason when the file could not be read or
// changed under the read. It returns an error, a providers.PublicError
// with ErrUnavailable, when the hash did not finish within timeout, when
// an earlier read of uid's is still blocked, or when maxOutstandingReads
// reads are: the caller's identity could not be read, and the connection
// is refused rather than judged without it.
func digestOf(exe string, st *unix.Stat_t, uid uint32, timeout time.Duration) (sum []byte, refused string, err error) {
	if st.Size > maxHashedExecutable {
		return nil, fmt.Sprintf("executable over %d MiB, not hashed", maxHashedExecutable>>20), nil
	}
	v := versionOf(st)
	if sum := digests.get(uid, v); sum != nil {
		return sum, "", nil
	}
	deadline := time.Now().Add(timeout)
	turn, refused, err := hashing.begin(uid, st.Size, deadline)
	if err != nil || refused != "" {
		if err == errHashDeadline {
			err = providers.Publicf(providers.ErrUnavailable, "the caller's executable was not hashed within %s", timeout)
		}
		return nil, refused, err
	}
	// Another connection of the uid may have hashed it while this one
	// waited its turn.
	if sum := digests.get(uid, v); sum != nil {
		turn.finish()
		return sum, "", nil
	}
	// The read runs on a goroutine of its own, which a read that never
	// returns keeps: this one stops waiting at the deadline.
	done := make(chan []byte, 1)
	go func() {
		sum := hashExecutable(exe, v)
		if sum != nil {
			digests.put(uid, v, sum)
		}
		turn.finish()
		done <- sum
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case sum := <-done:
		return sum, "", nil
	case <-timer.C:
		if !turn.abandon() {
			return <-done, "", nil
		}
		return nil, "", providers.Publicf(providers.ErrUnavailable, "the caller's executable was not hashed within %s", timeout)
	}
}

// hashExecutable reads and hashes exe if it is still file version v, and
// returns nil if it cannot or the file changed while it read.
func hashExecutable(exe string, v fileVersion) []byte {
	f, err := os.Open(exe)
	if err != nil {
		return nil
	}
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || versionOf(&st) != v {
		return nil
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, maxHashedExecutable+1))
	hashedBytes.Add(n)
	if err != nil || n != v.size {
		return nil
	}
	// A write while hashing changes the version: hash again next time
	// rather than cache a digest of neither version.
	if unix.Fstat(int(f.Fd()), &st) != nil || versionOf(&st) != v {
		return nil
	}
	return h.Sum(nil)
}

// digestCache caches executables' SHA-256 by file version and by uid:
// hashing a binary costs milliseconds, and a service's callers run the
// same one. Each uid's entries are its own, at most perUID of them, its
// least recently used going first; so a uid that churns through versions
// evicts only its own. When the cache holds total entries, a new one
// takes the place of the least recently used entry of the uid holding the
// most: a victim keeps its entries unless it holds as many as anyone.
// A binary run by two uids is hashed once for each. It is safe for
// concurrent use.
type digestCache struct {
	mu            sync.Mutex
	perUID, total int
	uids          map[uint32]*uidDigests
	entries       int    // over all uids
	clock         uint64 // counts uses, to order them
}

// uidDigests are one uid's cached digests.
type uidDigests struct {
	m map[fileVersion]*cachedDigest
}

type cachedDigest struct {
	sum  []byte
	used uint64 // the cache's clock at its last use
}

const (
	maxCachedDigestsPerUID = 64
	maxCachedDigests       = 1024
)

var digests = newDigestCache(maxCachedDigestsPerUID, maxCachedDigests)

func newDigestCache(perUID, total int) *digestCache {
	return &digestCache{perUID: perUID, total: total, uids: make(map[uint32]*uidDigests)}
}

func (c *digestCache) get(uid uint32, v fileVersion) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.uids[uid]
	if u == nil {
		return nil
	}
	e := u.m[v]
	if e == nil {
		return nil
	}
	c.clock++
	e.used = c.clock
	return e.sum
}

func (c *digestCache) put(uid uint32, v fileVersion, sum []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	u := c.uids[uid]
	if u == nil {
		u = &uidDigests{m: make(map[fileVersion]*cachedDigest)}
	}
	if e := u.m[v]; e != nil {
		e.sum, e.used = sum, c.clock
		return
	}
	switch {
	case len(u.m) >= c.perUID:
		c.evictLocked(uid, u)
	case c.entries >= c.total:
		// The uid holding the most gives one up; the newcomer, if it is
		// among them, gives up its own.
		victim, most := uid, len(u.m)
		for id, o := range c.uids {
			if len(o.m) > most {
				victim, most = id, len(o.m)
			}
		}
		if victim == uid {
			c.evictLocked(uid, u)
		} else {
			c.evictLocked(victim, c.uids[victim])
		}
	}
	// Set again: evicting the uid's last entry forgot it.
	c.uids[uid] = u
	u.m[v] = &cachedDigest{sum: sum, used: c.clock}
	c.entries++
}

// evictLocked removes u's least recently used entry.
func (c *digestCache) evictLocked(uid uint32, u *uidDigests) {
	var oldest fileVersion
	var at uint64
	found := false
	for v, e := range u.m {
		if !found || e.used < at {
			oldest, at, found = v, e.used, true
		}
	}
	if !found {
		return
	}
	delete(u.m, oldest)
	c.entries--
	if len(u.m) == 0 {
		delete(c.uids, uid)
	}
}
