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

// beforeHashRead, when set (by tests only), is called by the goroutine
// hashing an executable of uid before it reads the file: a test stands in
// for a filesystem whose reads stall.
var beforeHashRead atomic.Pointer[func(uid uint32)]

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
	if sum := digests.get(v); sum != nil {
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
	if sum := digests.get(v); sum != nil {
		turn.finish()
		return sum, "", nil
	}
	// The read runs on a goroutine of its own, which a read that never
	// returns keeps: this one stops waiting at the deadline.
	done := make(chan []byte, 1)
	go func() {
		sum := hashExecutable(exe, v, uid)
		if sum != nil {
			digests.put(v, sum)
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
func hashExecutable(exe string, v fileVersion, uid uint32) []byte {
	f, err := os.Open(exe)
	if err != nil {
		return nil
	}
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || versionOf(&st) != v {
		return nil
	}
	if hook := beforeHashRead.Load(); hook != nil {
		(*hook)(uid)
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

// digestCache caches executables' SHA-256 by file version: hashing a
// binary costs milliseconds, and a service's callers run the same one. It
// holds at most maxCachedDigests; past that, one entry goes for each new
// one, so a caller making many versions cannot empty everyone's cache at
// once. It is safe for concurrent use.
type digestCache struct {
	mu sync.Mutex
	m  map[fileVersion][]byte
}

const maxCachedDigests = 1024

var digests = &digestCache{m: make(map[fileVersion][]byte)}

func (c *digestCache) get(v fileVersion) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[v]
}

func (c *digestCache) put(v fileVersion, sum []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[v]; !ok && len(c.m) >= maxCachedDigests {
		for old := range c.m { // an arbitrary one
			delete(c.m, old)
			break
		}
	}
	c.m[v] = sum
}
