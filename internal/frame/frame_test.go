package frame

import "testing"

// TestLastReleaseReturnsBytes: the bytes stay while any holder has a
// reference, and the last release gives them back; one release too many,
// or a retain of a released buffer, is a bug that panics rather than let
// two owners share recycled memory.
func TestLastReleaseReturnsBytes(t *testing.T) {
	freed := 0
	b := New(make([]byte, 8), func(p []byte) { freed += len(p) })
	kept := b.Retain()
	b.Release()
	if !kept.Held() || len(kept.Bytes()) != 8 || freed != 0 {
		t.Fatal("bytes gone while a holder keeps a reference")
	}
	kept.Release()
	if b.Held() || b.Bytes() != nil || freed != 8 {
		t.Fatal("the last release kept the bytes")
	}
	for _, c := range []struct {
		name string
		f    func()
	}{{"Release", b.Release}, {"Retain", func() { b.Retain() }}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s of a released buffer did not panic", c.name)
				}
			}()
			c.f()
		}()
	}
	var none *Buffer // bytes no Buffer holds
	none.Retain()
	none.Release()
}

// TestPooled: a recycled buffer too small for a frame is not handed out.
func TestPooled(t *testing.T) {
	Recycle(make([]byte, 0, 1<<10))
	if b := Pooled(2 << 10); b != nil {
		t.Errorf("Pooled(2 KiB) = %d bytes", cap(b))
	}
}

// A small frame does not get a buffer many times its size from the pool.
func TestPooledKeepsSizes(t *testing.T) {
	for range 100 {
		Recycle(make([]byte, 0, 1<<20))
	}
	for range 100 {
		if b := Pooled(17 << 10); b != nil && cap(b) > 2*minPooled {
			t.Fatalf("Pooled(17 KiB) gave a buffer of %d bytes", cap(b))
		}
	}
	found := false
	for range 100 {
		if b := Pooled(600 << 10); b != nil {
			found = found || cap(b) == 1<<20
		}
	}
	if !found {
		t.Log("no pooled buffer came back for a frame of its size (the pool may have been emptied by a collection)")
	}
}
