package fair

import (
	"slices"
	"testing"
)

// TestRoundRobin: a key with many items waiting takes one turn in each
// round, so another key's item is served second, not last.
func TestRoundRobin(t *testing.T) {
	var q Queue[int]
	for i := range 5 {
		q.Push("flood", i)
	}
	q.Push("victim", 100)
	q.Push("other", 200)
	q.Push("victim", 101)
	var got []int
	for {
		v, ok := q.Pop()
		if !ok {
			break
		}
		got = append(got, v)
	}
	want := []int{0, 100, 200, 1, 101, 2, 3, 4}
	if !slices.Equal(got, want) {
		t.Errorf("served %v, want %v", got, want)
	}
	if q.Len() != 0 {
		t.Errorf("Len %d after draining", q.Len())
	}
}

func TestRemove(t *testing.T) {
	var q Queue[int]
	q.Push("a", 1)
	q.Push("b", 2)
	q.Push("a", 3)
	if !q.Remove("b", 2) || q.Remove("b", 2) {
		t.Fatal("Remove of a waiting item, then again")
	}
	if !q.Remove("a", 1) || !q.Remove("a", 3) {
		t.Fatal("Remove of a's items")
	}
	if _, ok := q.Pop(); ok || q.Len() != 0 {
		t.Error("queue not empty after removing everything")
	}
	q.Push("c", 4)
	if v, ok := q.Pop(); !ok || v != 4 {
		t.Errorf("Pop after removals: %d %v", v, ok)
	}
}
