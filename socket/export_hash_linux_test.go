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
