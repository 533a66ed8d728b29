package socket

import (
	"testing"
	"time"
)

// HashedBytes is what the agent has read to hash executables so far.
func HashedBytes() int64 { return hashedBytes.Load() }

// SetHashCredit gives each uid credit bytes of hashing, refilled over
// refill, until the test ends.
func SetHashCredit(t testing.TB, credit int64, refill time.Duration) {
	reset := func(credit int64, refill time.Duration) {
		hashing.mu.Lock()
		hashCredit, hashRefill = credit, refill
		clear(hashing.uids)
		hashing.mu.Unlock()
	}
	oldCredit, oldRefill := hashCredit, hashRefill
	reset(credit, refill)
	t.Cleanup(func() { reset(oldCredit, oldRefill) })
}

// SetDigestCacheLimits empties the digest cache and bounds it to perUID
// entries per uid and total in all, until the test ends.
func SetDigestCacheLimits(t testing.TB, perUID, total int) {
	reset := func(perUID, total int) {
		digests.mu.Lock()
		digests.perUID, digests.total = perUID, total
		clear(digests.uids)
		digests.entries = 0
		digests.mu.Unlock()
	}
	reset(perUID, total)
	t.Cleanup(func() { reset(maxCachedDigestsPerUID, maxCachedDigests) })
}

// HashUsers is how many of uid's connections are waiting to hash or
// hashing, plus its read left blocked if it has one.
func HashUsers(uid uint32) int {
	hashing.mu.Lock()
	defer hashing.mu.Unlock()
	if u := hashing.uids[uid]; u != nil {
		return u.users
	}
	return 0
}
