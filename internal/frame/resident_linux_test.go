package frame

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestPagesResidentAsWritten: a buffer takes memory only for the pages
// written, so a frame announced large and sent in part costs its part.
func TestPagesResidentAsWritten(t *testing.T) {
	b, err := Alloc(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { Recycle(b); Trim() }()
	clear(b[:10<<10])
	vec := make([]byte, cap(b)/PageSize)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(cap(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	resident := 0
	for _, v := range vec {
		resident += int(v & 1)
	}
	if want := (10<<10)/PageSize + 1; resident > want {
		t.Errorf("%d pages resident of a 4 MiB buffer after writing 10 KiB, want at most %d", resident, want)
	}
}
