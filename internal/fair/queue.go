// Package fair shares a resource among callers in turn: waiters for it
// (a device's session, the TPM, the agent's CPUs) queue by caller, and
// the next one served is the oldest of the caller after the last one
// served, so a caller with a thousand waiting costs another caller one
// turn, not a thousand. Queue is the line itself; Gate is a line in
// front of a number of slots.
//
// A Queue is not safe for concurrent use; its owner guards it. A Gate
// is.
package fair

// Queue is a FIFO per key, served round-robin across keys. The zero
// value is an empty queue.
type Queue[T comparable] struct {
	byKey map[any]*list[T]
	ring  []*list[T] // keys with items waiting; the head is served next
	n     int
}

type list[T comparable] struct {
	key   any
	items []T
}

// Len is how many items wait.
func (q *Queue[T]) Len() int { return q.n }

// Push adds item at the end of key's line. A key new to the queue takes
// its turn after every key waiting already.
func (q *Queue[T]) Push(key any, item T) {
	if q.byKey == nil {
		q.byKey = make(map[any]*list[T])
	}
	l := q.byKey[key]
	if l == nil {
		l = &list[T]{key: key}
		q.byKey[key] = l
		q.ring = append(q.ring, l)
	}
	l.items = append(l.items, item)
	q.n++
}

// Pop takes the first item of the key whose turn it is, and moves that
// key to the end of the round.
func (q *Queue[T]) Pop() (item T, ok bool) {
	_, item, ok = q.PopIf(nil)
	return item, ok
}

// PopIf is Pop for the first key in turn that eligible accepts (nil
// accepts any); keys passed over keep their places at the head of the
// round.
func (q *Queue[T]) PopIf(eligible func(key any) bool) (key any, item T, ok bool) {
	i := 0
	for i < len(q.ring) && eligible != nil && !eligible(q.ring[i].key) {
		i++
	}
	if i == len(q.ring) {
		return nil, item, false
	}
	l := q.ring[i]
	n := len(q.ring)
	copy(q.ring[i:], q.ring[i+1:])
	q.ring[n-1] = nil
	q.ring = q.ring[:n-1]
	item = l.items[0]
	var zero T
	l.items[0] = zero
	l.items = l.items[1:]
	if len(l.items) > 0 {
		q.ring = append(q.ring, l)
	} else {
		delete(q.byKey, l.key)
	}
	q.n--
	return l.key, item, true
}

// Remove takes item out of key's line, for a waiter that gave up; it
// reports false if item was not there (it was popped already).
func (q *Queue[T]) Remove(key any, item T) bool {
	l := q.byKey[key]
	if l == nil {
		return false
	}
	for i, it := range l.items {
		if it != item {
			continue
		}
		l.items = append(l.items[:i], l.items[i+1:]...)
		q.n--
		if len(l.items) == 0 {
			delete(q.byKey, key)
			for j, r := range q.ring {
				if r == l {
					q.ring = append(q.ring[:j], q.ring[j+1:]...)
					break
				}
			}
		}
		return true
	}
	return false
}
