package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/benchenv"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// macRequest is a MAC frame of 64 bytes on key, request ID 0 (set per
// request).
func macRequest(key string) []byte {
	m := wire.Message{Type: wire.TypeMAC, Algorithm: 3, Key: []byte(key), Data: make([]byte, 64)}
	b, _ := m.Append(nil)
	return b
}

// rawConn is a connection speaking frames by hand: the least a client can
// do, so the figures are the agent's and the protocol's.
type rawConn struct {
	c  net.Conn
	r  *bufio.Reader
	fr *wire.FrameReader
	w  *bufio.Writer
}

func dialRaw(path string, hello bool) (*rawConn, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	rc := &rawConn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10)}
	rc.fr = wire.NewFrameReader(rc.r, 1<<20)
	if hello {
		b, _ := (&wire.Message{Type: wire.TypeHello, MinVersion: 1, MaxVersion: 1}).Append(nil)
		rc.c.Write(b)
		if _, err := rc.fr.Next(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return rc, nil
}

// pingPong sends one MAC request on key at a time for d and returns ops/s
// and the p50 and p99 round-trip times. Without hello, path is the echo
// server, which answers any frame with one the size of a TAG.
func pingPong(path, key string, hello bool, d time.Duration) (opsPerSec, p50, p99 float64, err error) {
	rc, err := dialRaw(path, hello)
	if err != nil {
		return 0, 0, 0, err
	}
	defer rc.c.Close()
	req := macRequest(key)
	reply := make([]byte, replySize)
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	var id uint32
	for time.Since(start) < d {
		id++
		binary.BigEndian.PutUint32(req[5:9], id)
		t := time.Now()
		if _, err := rc.c.Write(req); err != nil {
			return 0, 0, 0, err
		}
		if hello {
			if _, err := rc.fr.Next(); err != nil {
				return 0, 0, 0, err
			}
		} else if _, err := io.ReadFull(rc.r, reply); err != nil {
			return 0, 0, 0, err
		}
		lat = append(lat, time.Since(t))
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	us := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e3 }
	return float64(len(lat)) / elapsed.Seconds(), us(0.5), us(0.99), nil
}

// pipelined keeps up to window MAC requests on key outstanding on each of
// conns connections for d and returns replies per second. Every reply must
// be a TAG. Replies may come in any order (a device key's do).
func pipelined(path, key string, conns, window int, d time.Duration) (float64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	deadline := time.Now().Add(d)
	for range conns {
		rc, err := dialRaw(path, true)
		if err != nil {
			return 0, err
		}
		wg.Go(func() {
			defer rc.c.Close()
			credit := make(chan struct{}, window)
			sent := make(chan int64, 1)
			go func() { // writer: as many as the window allows, in batches
				req := macRequest(key)
				var n int64
				for time.Now().Before(deadline) {
					credit <- struct{}{}
					n++
					binary.BigEndian.PutUint32(req[5:9], uint32(n))
					rc.w.Write(req)
					if len(credit) == cap(credit) || rc.w.Available() < len(req) {
						rc.w.Flush()
					}
				}
				// One more request, sent after the count: its reply wakes
				// a reader that has all the others.
				credit <- struct{}{}
				sent <- n + 1
				binary.BigEndian.PutUint32(req[5:9], uint32(n+1))
				rc.w.Write(req)
				rc.w.Flush()
			}()
			var got int64
			want := int64(-1)
			for want < 0 || got < want {
				body, err := rc.fr.Next()
				if err != nil {
					errs <- err
					return
				}
				if wire.Type(body[0]) != wire.TypeTag {
					var m wire.Message
					wire.Decode(body, &m)
					errs <- fmt.Errorf("reply %s: %s", m.Type, m.Data)
					return
				}
				got++
				select {
				case <-credit:
				default:
				}
				if want < 0 {
					select {
					case want = <-sent:
					default:
					}
				}
			}
			total.Add(got)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return float64(total.Load()) / d.Seconds(), nil
}

// inProcess is the floor for one-shot MACs: crypto/hmac keyed once and
// reset per message, as the agent does.
func inProcess(d time.Duration) float64 {
	h := hmac.New(sha256.New, benchenv.Secret)
	msg := make([]byte, 64)
	var tag [32]byte
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		for range 1000 {
			h.Reset()
			h.Write(msg)
			h.Sum(tag[:0])
		}
		n += 1000
	}
	return float64(n) / time.Since(start).Seconds()
}

// inProcessStream is crypto/hmac over size bytes in 64 KiB writes, MB/s.
func inProcessStream(size int) float64 {
	h := hmac.New(sha256.New, benchenv.Secret)
	chunk := make([]byte, 64<<10)
	start := time.Now()
	for n := 0; n < size; n += len(chunk) {
		h.Write(chunk)
	}
	h.Sum(nil)
	return float64(size) / 1e6 / time.Since(start).Seconds()
}
