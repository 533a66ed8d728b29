package frame

import (
	"testing"
	"unsafe"
)

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
	mustPanic(t, "Release of a released buffer", b.Release)
	mustPanic(t, "Retain of a released buffer", func() { b.Retain() })
	var none *Buffer // bytes no Buffer holds
	none.Retain()
	none.Release()
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

// TestPooled: a recycled buffer comes back for a frame of about its size,
// and only for one: never too small, and never many times larger.
func TestPooled(t *testing.T) {
	defer Trim()
	b, err := Alloc(200 << 10)
	if err != nil {
		t.Fatal(err)
	}
	Recycle(b)
	if p := Pooled(300 << 10); p != nil {
		t.Errorf("Pooled(300 KiB) = %d bytes", cap(p))
	}
	if p := Pooled(17 << 10); p != nil {
		t.Errorf("Pooled(17 KiB) = %d bytes: more than twice minPooled", cap(p))
	}
	p := Pooled(100 << 10)
	if p == nil || len(p) != 100<<10 || unsafe.SliceData(p) != unsafe.SliceData(b) {
		t.Fatalf("Pooled(100 KiB) did not give back the 200 KiB buffer")
	}
	if Pooled(100<<10) != nil {
		t.Error("a pooled buffer handed out twice")
	}
	// Whoever keeps the frame is charged for all it holds.
	mb := Mapping(p)
	if mb.Size() != 200<<10 {
		t.Errorf("a 100 KiB frame in a 200 KiB buffer holds %d bytes, want 200 KiB", mb.Size())
	}
	mb.Release()
}

// TestMappedAccounting: every buffer made is unmapped once recycled past
// the pool's bound or trimmed, and the pool keeps at most PoolMax.
func TestMappedAccounting(t *testing.T) {
	Trim()
	total0, _ := Mapped()
	var bufs [][]byte
	for range 3 * PoolMax / (1 << 20) {
		b, err := Alloc(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, b)
	}
	if total, _ := Mapped(); total != total0+len(bufs)<<20 {
		t.Fatalf("%d bytes mapped for %d MiB of buffers", total-total0, len(bufs))
	}
	for _, b := range bufs {
		Recycle(b)
	}
	total, pooled := Mapped()
	if pooled > PoolMax || total-total0 != pooled {
		t.Fatalf("after recycling: %d bytes mapped, %d pooled (at most %d)", total-total0, pooled, PoolMax)
	}
	Trim()
	if total, pooled := Mapped(); total != total0 || pooled != 0 {
		t.Fatalf("after Trim: %d bytes mapped, %d pooled", total-total0, pooled)
	}
}

// TestRecycleRefusesOthersMemory: memory that is not a buffer of ours,
// or one already given back, is never unmapped or pooled: that would
// crash the agent later, far from the bug.
func TestRecycleRefusesOthersMemory(t *testing.T) {
	defer Trim()
	mustPanic(t, "Recycle of heap memory", func() { Recycle(make([]byte, 64<<10)) })
	b, err := Alloc(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	Recycle(b)
	mustPanic(t, "a second Recycle", func() { Recycle(b) })
	Recycle(nil) // no buffer at all
}

// TestMappingsBounded: past maxMappings Alloc fails, and Copy keeps its
// bytes on the heap instead: a caller holding thousands of small buffers
// must not run the process out of the kernel's regions, past which every
// mmap, the Go runtime's included, fails.
func TestMappingsBounded(t *testing.T) {
	Trim()
	total0, _ := Mapped()
	defer func(n int) { maxMappings = n }(maxMappings)
	mapped.mu.Lock()
	maxMappings = len(mapped.live) + 2
	mapped.mu.Unlock()
	a, err := Alloc(PageSize)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Alloc(PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Alloc(PageSize); err == nil {
		t.Fatal("Alloc past maxMappings succeeded")
	}
	total, _ := Mapped()
	c := Copy(make([]byte, minPooled))
	if len(c.Bytes()) != minPooled {
		t.Fatalf("Copy past maxMappings: %d bytes", len(c.Bytes()))
	}
	if now, _ := Mapped(); now != total {
		t.Error("Copy past maxMappings mapped memory")
	}
	c.Release()
	Recycle(a)
	Recycle(b)
	if total, pooled := Mapped(); pooled != 0 || total != total0 {
		t.Errorf("buffers under minRecycled kept: %d bytes mapped, %d pooled", total-total0, pooled)
	}
}
