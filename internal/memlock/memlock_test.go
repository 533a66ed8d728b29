package memlock

import (
	"bytes"
	"testing"
)

func TestSecret(t *testing.T) {
	s, err := New([]byte("secret bytes"))
	if err != nil {
		t.Logf("not locked (limit): %v", err)
	}
	if !bytes.Equal(s.Bytes(), []byte("secret bytes")) {
		t.Fatalf("got %q", s.Bytes())
	}
	mem := s.mem
	s.Destroy()
	s.Destroy() // idempotent
	_ = mem     // unmapped now: reading it would fault
	if e, err := New(nil); err != nil || len(e.Bytes()) != 0 {
		t.Errorf("empty secret: %v", err)
	} else {
		e.Destroy()
	}
}
