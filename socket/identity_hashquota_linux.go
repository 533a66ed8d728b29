//go:build linux

package socket

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// hashQuota holds each uid to its turn and its credit, the agent to
// maxConcurrentHashes hashes within their deadlines and to
// maxOutstandingReads reads not returned (see identity_hash_linux.go). It
// is safe for concurrent use.
type hashQuota struct {
	slots chan struct{} // a token per hash running within its deadline
	reads chan struct{} // a token per read not returned, within its deadline or past it

	mu   sync.Mutex
	uids map[uint32]*uidHashing
}

// uidHashing is one uid's share of hashing.
type uidHashing struct {
	turn   chan struct{} // holds a token while one of the uid's hashes runs or waits for a slot, or its read is blocked past its deadline
	credit int64         // bytes it may have hashed now; guarded by hashQuota.mu
	at     time.Time     // when credit was last brought up to date
	users  int           // connections inside begin, and a read left blocked; guarded by hashQuota.mu
	// stalled is set while the uid's turn is held by a read left blocked
	// past its deadline; guarded by hashQuota.mu.
	stalled bool
}

var hashing = newHashQuota(maxConcurrentHashes, maxOutstandingReads)

func newHashQuota(slots, reads int) *hashQuota {
	return &hashQuota{slots: make(chan struct{}, slots), reads: make(chan struct{}, reads), uids: make(map[uint32]*uidHashing)}
}

// errHashDeadline is what begin returns when the deadline passed while
// the uid waited for its turn or a slot; digestOf says it to the caller
// with the timeout.
var errHashDeadline = errors.New("executable not hashed by its deadline")

// begin waits, until deadline, for uid's turn and a slot to hash size
// bytes, and takes them from uid's credit. It returns the turn, to finish
// (or abandon) when the hash is over; or why the binary will not be hashed
// (refused: uid's credit is spent); or an error when it cannot be hashed
// now: errHashDeadline, or a providers.PublicError (ErrUnavailable) when a
// read of uid's is blocked or maxOutstandingReads are.
func (q *hashQuota) begin(uid uint32, size int64, deadline time.Time) (turn *hashTurn, refused string, err error) {
	q.mu.Lock()
	u := q.uids[uid]
	if u == nil {
		u = &uidHashing{turn: make(chan struct{}, 1), credit: hashCredit, at: time.Now()}
		q.uids[uid] = u
	}
	if u.stalled {
		q.mu.Unlock()
		return nil, "", providers.Publicf(providers.ErrUnavailable,
			"an earlier read of an executable of uid %d has not returned; none of its executables is hashed until it does", uid)
	}
	u.users++
	q.mu.Unlock()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case u.turn <- struct{}{}:
	case <-timer.C:
		q.drop(uid, u)
		return nil, "", errHashDeadline
	}
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
		return nil, fmt.Sprintf("uid %d had the agent hash more than %d MiB of executables in the last %s; not hashed", uid, hashCredit>>20, hashRefill), nil
	}
	select {
	case q.slots <- struct{}{}:
	case <-timer.C:
		q.leave(uid, u)
		return nil, "", errHashDeadline
	}
	select {
	case q.reads <- struct{}{}:
	default:
		<-q.slots
		q.leave(uid, u)
		return nil, "", providers.Publicf(providers.ErrUnavailable,
			"%d reads of executables have not returned; no other executable is hashed until one does", cap(q.reads))
	}
	return &hashTurn{q: q, uid: uid, u: u}, "", nil
}

// leave gives back u's turn and drops the use begin counted.
func (q *hashQuota) leave(uid uint32, u *uidHashing) {
	<-u.turn
	q.drop(uid, u)
}

// drop uncounts a use of u, and forgets u once nobody waits on it and its
// credit would be whole again: a crowd of uids leaves nothing behind.
func (q *hashQuota) drop(uid uint32, u *uidHashing) {
	q.mu.Lock()
	defer q.mu.Unlock()
	u.users--
	if u.users == 0 && u.credit >= hashCredit {
		delete(q.uids, uid)
	}
	// A uid in debt is kept until its credit is whole: pruned here, on
	// the next drop of anyone, once its time has come.
	for id, o := range q.uids {
		if o.users == 0 && o.credit+int64(float64(hashCredit)*float64(time.Since(o.at))/float64(hashRefill)) >= hashCredit {
			delete(q.uids, id)
		}
	}
}

// hashTurn is a uid's turn to hash, holding a slot and a read. Its
// methods are safe for concurrent use.
type hashTurn struct {
	q   *hashQuota
	uid uint32
	u   *uidHashing

	mu        sync.Mutex
	finished  bool // the read returned, or never began
	abandoned bool // its connection stopped waiting at the deadline
}

// finish ends the turn once its read has returned (or when it needs
// none): it gives back what the turn still holds.
func (t *hashTurn) finish() {
	t.mu.Lock()
	t.finished = true
	abandoned := t.abandoned
	t.mu.Unlock()
	if !abandoned {
		<-t.q.slots
	}
	<-t.q.reads
	t.q.mu.Lock()
	t.u.stalled = false
	t.q.mu.Unlock()
	t.q.leave(t.uid, t.u)
}

// abandon is called when the deadline passed with the read still running:
// the slot goes to other hashes, and the read keeps the uid's turn and its
// place among the reads not returned until it returns. It reports false
// if the read returned meanwhile (then finish has given everything back).
func (t *hashTurn) abandon() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished {
		return false
	}
	t.abandoned = true
	<-t.q.slots
	t.q.mu.Lock()
	t.u.stalled = true
	t.q.mu.Unlock()
	return true
}
