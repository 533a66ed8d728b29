package memlock

import "golang.org/x/sys/unix"

// dontDump leaves the pages out of core dumps.
func dontDump(mem []byte) { unix.Madvise(mem, unix.MADV_DONTDUMP) }
