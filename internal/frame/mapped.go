//go:build linux || darwin || freebsd

package frame

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Large frames live in anonymous mappings of their own, outside the Go
// heap. Within its byte limit a caller can make the agent hold a hundred
// megabytes of frames (PKCS#11 input kept for copies). On the Go heap
// those megabytes would grow the heap, and the runtime keeps what it
// built to manage the larger heap (a span structure per frame, the
// collector's metadata: megabytes against an idle agent's twenty) for
// the life of the process, after the caller has long left. A mapping is
// given back whole by munmap. And only the pages written are resident,
// so a frame announced and not sent costs what was sent, whatever its
// mapping's length.

// maxMappings bounds the mappings that exist at once, pooled or not.
// Each may be a region of its own in the kernel's map of the process,
// which allows vm.max_map_count of them (65530 by default) for
// everything, the Go runtime's own and the libraries' included: past it
// every mmap, and every munmap that splits a region, fails. Past this
// bound Alloc fails, and its callers keep their bytes on the Go heap.
var maxMappings = mappingsAllowed()

// PoolMax bounds the memory the pool keeps between frames: what one
// caller may hold at the default limits (max_bytes_per_uid). A PKCS#11
// stream's copy log keeps up to half that in frames and lets them all go
// at once; pooled, they serve the frames after it, where unmapping them
// and faulting fresh pages in cost PKCS#11 streaming 8-13% (hmac-bench
// -compare, with a pool of 16 MiB). It is the agent's own, charged to no
// caller, and Trim empties it once a burst is over.
const PoolMax = 64 << 20

// minPooled is the size below which Pooled does not tell buffers apart.
const minPooled = 64 << 10

// minRecycled is the least buffer the pool keeps: Pooled is asked only
// for frames past a connection's read buffer (16 KiB), and a smaller
// buffer would sit in the pool taking a frame's room.
const minRecycled = 16 << 10

// PageSize is the system's page, the unit a mapping takes memory in.
var PageSize = os.Getpagesize()

var mapped struct {
	mu   sync.Mutex
	live map[uintptr]bool // base of every mapping not unmapped: true while pooled
	pool [][]byte         // recycled, the most recent last: its pages are the likeliest resident
	held int              // bytes in pool
	size int              // bytes in live
}

// Alloc returns a new buffer of n bytes outside the Go heap, its
// capacity n rounded up to whole pages. Its pages take memory as they
// are first written. The caller gives it back with Recycle, or with a
// Buffer whose free is Recycle, and must not touch it afterwards: its
// pages may be unmapped.
func Alloc(n int) ([]byte, error) {
	size := Pages(n)
	mapped.mu.Lock()
	defer mapped.mu.Unlock()
	if len(mapped.live) >= maxMappings {
		return nil, fmt.Errorf("frame: %d mappings already, the most allowed", len(mapped.live))
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("frame: mapping %d bytes: %w", size, err)
	}
	noHugePages(b)
	if mapped.live == nil {
		mapped.live = make(map[uintptr]bool)
	}
	mapped.live[base(b)] = false
	mapped.size += size
	return b[:n], nil
}

// Pooled returns a recycled buffer of n bytes, or nil if the pool has
// none of about that size: at least n, and at most twice n or twice
// minPooled, whichever is more. Memory is charged to a caller, and kept
// by whoever holds a frame, by what a frame needs, so a small frame must
// not travel in a megabyte another frame left behind.
func Pooled(n int) []byte {
	mapped.mu.Lock()
	defer mapped.mu.Unlock()
	for i := len(mapped.pool) - 1; i >= 0; i-- {
		b := mapped.pool[i]
		if c := cap(b); c >= n && c <= 2*max(n, minPooled) {
			mapped.pool = append(mapped.pool[:i], mapped.pool[i+1:]...)
			mapped.held -= c
			mapped.live[base(b)] = false
			return b[:n]
		}
	}
	return nil
}

// Recycle takes back b, from Alloc or Pooled, for a later frame, or
// unmaps it if the pool is full. The caller must not use b afterwards.
// A b that is not such a buffer, or one recycled twice, panics: unmapping
// memory that something else owns would crash the agent later, far from
// the bug.
func Recycle(b []byte) {
	if cap(b) == 0 {
		return
	}
	b = b[:cap(b)]
	mapped.mu.Lock()
	defer mapped.mu.Unlock()
	pooled, ok := mapped.live[base(b)]
	switch {
	case !ok:
		panic("frame: Recycle of memory not from Alloc")
	case pooled:
		panic("frame: Recycle of a buffer already recycled")
	case len(b) < minRecycled || mapped.held+len(b) > PoolMax:
		unmapLocked(b)
		return
	}
	mapped.live[base(b)] = true
	mapped.pool = append(mapped.pool, b)
	mapped.held += len(b)
}

// Trim unmaps every buffer in the pool, for a moment when a burst of
// work is over and what it left behind should go back to the system.
func Trim() {
	mapped.mu.Lock()
	defer mapped.mu.Unlock()
	for i, b := range mapped.pool {
		unmapLocked(b)
		mapped.pool[i] = nil
	}
	mapped.pool = mapped.pool[:0]
	mapped.held = 0
}

// Mapped reports the bytes in buffers not unmapped, pooled or not, and
// of those the bytes in the pool.
func Mapped() (total, pooled int) {
	mapped.mu.Lock()
	defer mapped.mu.Unlock()
	return mapped.size, mapped.held
}

func unmapLocked(b []byte) {
	delete(mapped.live, base(b))
	mapped.size -= cap(b)
	if err := unix.Munmap(b[:cap(b)]); err != nil {
		// Out of regions (see maxMappings), which the bound should
		// make impossible: the pages go back all the same, and the
		// address range is left behind.
		unix.Madvise(b[:cap(b)], unix.MADV_DONTNEED)
	}
}

// mappingsAllowed is a quarter of vm.max_map_count, and at most 16384:
// room for the runtime and the libraries, and for every mapping of ours
// to be a region of its own.
func mappingsAllowed() int {
	n := 65530
	if b, err := os.ReadFile("/proc/sys/vm/max_map_count"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			n = v
		}
	}
	return min(n/4, 16384)
}

func base(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// Copy returns a Buffer holding a copy of p: in a mapping of its own if
// p is as large as the frames the pool keeps, so that bytes a caller
// makes the agent keep in large pieces stay off the heap (see above),
// and on the Go heap if smaller. A mapping per small piece cost a
// PKCS#11 stream of 4-16 KiB updates a third of its speed (an mmap and
// an munmap each, as its copy log kept and let go of them), and pieces
// that small are what a connection's own buffer holds, 16 KiB at most.
// A mapping that cannot be made falls back to the heap.
func Copy(p []byte) *Buffer {
	if len(p) >= minPooled {
		if b, err := Alloc(len(p)); err == nil {
			copy(b, p)
			return Mapping(b)
		}
	}
	return New(append([]byte(nil), p...), nil)
}

// CopySize is the memory Copy takes for n bytes: whole pages in a
// mapping, or n on the heap.
func CopySize(n int) int {
	if n < minPooled {
		return n
	}
	return Pages(n)
}

// Pages is n rounded up to whole pages: what n bytes take in a mapping.
func Pages(n int) int { return (n + PageSize - 1) / PageSize * PageSize }
