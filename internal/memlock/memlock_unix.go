//go:build linux || darwin || freebsd

// Package memlock keeps secrets in memory that is locked out of swap and
// left out of core dumps. Each secret gets pages of its own, mapped
// outside the Go heap: locking a heap slice would share pages with other
// objects, and unlocking it later would unlock them too.
package memlock

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Secret is a copy of secret bytes in locked memory. It is not safe for
// concurrent Destroy.
type Secret struct {
	mem []byte // the whole mapping
	n   int
}

// New copies data into a new mapping and locks it. If locking fails (the
// RLIMIT_MEMLOCK limit), the Secret is still returned, unlocked, with the
// error, so the caller can say so and go on.
func New(data []byte) (*Secret, error) {
	s, err := Alloc(len(data))
	if s != nil {
		copy(s.mem, data)
	}
	return s, err
}

// Alloc returns n zero bytes of locked memory to fill in place, so that
// what is written there never has a copy elsewhere. Errors are as for
// New.
func Alloc(n int) (*Secret, error) {
	page := os.Getpagesize()
	size := max(page, (n+page-1)/page*page)
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("memlock: mmap: %w", err)
	}
	s := &Secret{mem: mem, n: n}
	dontDump(mem)
	if err := unix.Mlock(mem); err != nil {
		return s, fmt.Errorf("memlock: mlock: %w (raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK= under systemd)", err)
	}
	return s, nil
}

// Bytes returns the secret, which the caller may write in place. The
// slice is valid until Destroy.
func (s *Secret) Bytes() []byte { return s.mem[:s.n:s.n] }

// Destroy zeroes the secret and releases its memory.
func (s *Secret) Destroy() {
	if s.mem == nil {
		return
	}
	clear(s.mem)
	unix.Munlock(s.mem)
	unix.Munmap(s.mem)
	s.mem = nil
}

// Truncate shortens the secret to n bytes, zeroing the rest.
func (s *Secret) Truncate(n int) {
	if n < s.n {
		clear(s.mem[n:s.n])
		s.n = n
	}
}
