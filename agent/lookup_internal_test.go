package agent

import (
	"fmt"
	"testing"
	"time"
)

// TestUnknownNamesBounded: a flood of distinct names never makes the set
// of unknown names hold more than maxUnknown, names expire after
// unknownTTL, and remove and reset forget them.
func TestUnknownNamesBounded(t *testing.T) {
	var u unknownNames
	now := time.Now()
	for i := range 20 * maxUnknown {
		u.add(fmt.Sprintf("flood-%d", i), now)
		if n := u.size(); n > maxUnknown {
			t.Fatalf("after %d names the set holds %d, more than %d", i+1, n, maxUnknown)
		}
	}
	last := fmt.Sprintf("flood-%d", 20*maxUnknown-1)
	if !u.has(last, now) {
		t.Error("the newest name was dropped")
	}
	if u.has(last, now.Add(unknownTTL)) {
		t.Error("a name is still unknown after unknownTTL")
	}
	u.remove(last)
	if u.has(last, now) {
		t.Error("remove did not forget the name")
	}
	u.reset()
	if u.size() != 0 {
		t.Error("reset kept names")
	}
}
