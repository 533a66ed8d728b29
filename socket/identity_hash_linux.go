//go:build linux

package socket

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A policy naming an executable's digest makes the agent read and hash the
// caller's binary at connect: work a caller chooses the size of, and can
// ask for again and again (a new copy, or a touch, is a new file version).
// What one uid can make the agent hash is bounded here:
//
//   - a binary over maxHashedExecutable is not hashed at all;
//   - a uid's connections hash one at a time, and the agent hashes at most
//     maxConcurrentHashes binaries at once, so one uid holds at most one
//     of those turns and others' connections still find one;
//   - each uid has a credit of hashCredit bytes, refilled at
//     hashCredit per hashRefill: a binary it would take past its credit is
//     not hashed.
//
// A digest found in the cache costs nothing and is not counted, so a
// service whose processes all run the same binary hashes it once per
// version. A binary not hashed has no digest, and every rule naming a
// digest denies its caller; the reason shows in the agent's log and audit
// lines with the caller's identity.

// maxHashedExecutable bounds the bytes hashed for one executable: a caller
// must not make the agent read a huge file. A larger binary has no digest,
// so rules naming one deny it.
const maxHashedExecutable = 256 << 20

// maxConcurrentHashes bounds the binaries hashed at once in the agent.
const maxConcurrentHashes = 2

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

var digests = digestCache{m: make(map[fileVersion][]byte)}

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

// hashQuota holds each uid to its turn and its credit, and the agent to
// maxConcurrentHashes. It is safe for concurrent use.
type hashQuota struct {
	slots chan struct{} // a token per hash running

	mu   sync.Mutex
	uids map[uint32]*uidHashing
}

// uidHashing is one uid's share of hashing.
type uidHashing struct {
	turn   chan struct{} // holds a token while one of the uid's hashes runs or waits for a slot
	credit int64         // bytes it may have hashed now; guarded by hashQuota.mu
	at     time.Time     // when credit was last brought up to date
	users  int           // connections inside begin; guarded by hashQuota.mu
}

var hashing = hashQuota{slots: make(chan struct{}, maxConcurrentHashes), uids: make(map[uint32]*uidHashing)}

// begin waits for uid's turn and a slot to hash size bytes, and takes them
// from uid's credit. It returns done, to call when the hash is over, or
// why the binary will not be hashed.
func (q *hashQuota) begin(uid uint32, size int64) (done func(), refused string) {
	q.mu.Lock()
	u := q.uids[uid]
	if u == nil {
		u = &uidHashing{turn: make(chan struct{}, 1), credit: hashCredit, at: time.Now()}
		q.uids[uid] = u
	}
	u.users++
	q.mu.Unlock()

	u.turn <- struct{}{}
	q.mu.Lock()
	now := time.Now()
	u.credit = min(hashCredit, u.credit+int64(float64(hashCredit)*float64(now.Sub(u.at))/float64(hashRefill)))
	u.at = now
	ok := size <= u.credit
	if ok {
		u.credit -= size
	}
	q.mu.Unlock()
	if !ok {
		q.leave(uid, u)
		return nil, fmt.Sprintf("uid %d had the agent hash more than %d MiB of executables in the last %s; not hashed", uid, hashCredit>>20, hashRefill)
	}
	q.slots <- struct{}{}
	return func() {
		<-q.slots
		q.leave(uid, u)
	}, ""
}

// leave gives back u's turn, and forgets u once nobody waits on it and
// its credit would be whole again: a crowd of uids leaves nothing behind.
func (q *hashQuota) leave(uid uint32, u *uidHashing) {
	<-u.turn
	q.mu.Lock()
	defer q.mu.Unlock()
	u.users--
	if u.users == 0 && u.credit >= hashCredit {
		delete(q.uids, uid)
	}
	// A uid in debt is kept until its credit is whole: pruned here, on
	// the next leave of anyone, once its time has come.
	for id, o := range q.uids {
		if o.users == 0 && o.credit+int64(float64(hashCredit)*float64(time.Since(o.at))/float64(hashRefill)) >= hashCredit {
			delete(q.uids, id)
		}
	}
}
