package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/benchenv"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// The victim and the attackers of -hostile run as this program in
// processes of their own, under other uids; the environment says which
// role and where the agent is.
const (
	roleEnv     = "HMAC_BENCH_HOSTILE_ROLE"
	roleSockEnv = "HMAC_BENCH_HOSTILE_SOCK"
	roleArgEnv  = "HMAC_BENCH_HOSTILE_ARG" // the victim's duration, or the attack's scale
)

// attackerLifetime ends an attacker that was never told to stop: a run
// cut short leaves nothing running for long.
const attackerLifetime = 2 * time.Minute

// runRoleIfAsked runs the victim or an attacker and exits, if this
// process is one.
func runRoleIfAsked() {
	role := os.Getenv(roleEnv)
	if role == "" {
		return
	}
	sock, arg := os.Getenv(roleSockEnv), os.Getenv(roleArgEnv)
	if role == "victim" {
		d, err := time.ParseDuration(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "victim:", err)
			os.Exit(2)
		}
		json.NewEncoder(os.Stdout).Encode(runVictim(sock, d))
		os.Exit(0)
	}
	scale, _ := strconv.ParseFloat(arg, 64)
	a, ok := attacks[role]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown role", role)
		os.Exit(2)
	}
	time.AfterFunc(attackerLifetime, func() { os.Exit(3) })
	// The attack runs until the bench closes stdin (or kills this
	// process); "ready N" tells the bench it is in place, holding N
	// connections or contexts, or with N connections flooding.
	stop := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
	if err := a(sock, scale, func(held int) { fmt.Println("ready", held) }, stop); err != nil {
		fmt.Println("attack failed:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// victimReport is what the victim measured: one-shot MAC round trips on
// the software and the PKCS#11 key, and every failure.
type victimReport struct {
	SoftP50, SoftP99     float64 // µs
	PKCS11P50, PKCS11P99 float64 // µs
	Calls, Failures      int     // Calls counts failed dials too
	FirstError           string
}

// runVictim dials the agent and measures 64-byte one-shot MACs, one at a
// time, for d on each key. A failed dial or call is counted and the
// victim goes on; it dials again after a failed dial.
func runVictim(sock string, d time.Duration) victimReport {
	var rep victimReport
	fail := func(err error) {
		rep.Failures++
		if rep.FirstError == "" {
			rep.FirstError = err.Error()
		}
	}
	ctx := context.Background()
	msg := make([]byte, 64)
	measureKey := func(key string) (p50, p99 float64) {
		var lat []time.Duration
		var c *client.Client
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for end := time.Now().Add(d); time.Now().Before(end); {
			if c == nil {
				var err error
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				c, err = client.Dial(dctx, sock)
				cancel()
				if err != nil {
					rep.Calls++
					fail(fmt.Errorf("dial: %w", err))
					c = nil
					time.Sleep(10 * time.Millisecond)
					continue
				}
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			start := time.Now()
			_, err := c.MAC(cctx, key, client.SHA256, msg)
			el := time.Since(start)
			cancel()
			rep.Calls++
			if err != nil {
				fail(fmt.Errorf("%s: %w", key, err))
				continue
			}
			lat = append(lat, el)
		}
		if len(lat) == 0 {
			return 0, 0
		}
		slices.Sort(lat)
		us := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e3 }
		return us(0.5), us(0.99)
	}
	rep.SoftP50, rep.SoftP99 = measureKey(benchenv.SoftKey)
	rep.PKCS11P50, rep.PKCS11P99 = measureKey(benchenv.PKCS11Key)
	return rep
}

// attack runs one hostile caller's attack: it calls ready once in place
// and keeps it up until stop is closed. scale is 1 for the full attack
// of the issue, less for -quick.
type attack func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error

// attackOrder is the order the bench runs them in and names them by.
var attackOrder = []string{"connections", "half_frames", "contexts", "pkcs11_input", "pkcs11_sessions", "unread_replies", "denials", "oneshot_flood", "big_oneshots"}

// cpuBurn is the control phase: a neighbour that keeps every CPU busy
// and never calls the agent. What it costs the victim is what the
// operating system's sharing of the CPUs costs, which no agent can
// change; an attack whose cost is near it adds little of its own.
const cpuBurn = "cpu_burn"

// controls are the phases that measure the machine, not the agent: the
// victim under a neighbour that never calls it.
var controls = []string{cpuBurn, echoFlood}

// echoFlood is the second control: a neighbour that floods a socket
// server of its own (the echo server, a process apart from its clients,
// as the agent is from its callers) with the one-shot flood's pattern
// (four connections, 64 frames in flight on each) and never calls the
// agent. It costs the victim what that much waking and switching between
// processes on the machine's CPUs costs, which no agent can change.
const echoFlood = "echo_flood"

var attacks = map[string]attack{
	echoFlood: func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		dir, err := os.MkdirTemp("", "hmac-bench-echo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		// The server is a process of its own, as the agent is: each
		// request and reply wakes a thread of another process.
		path, stopEcho, err := startEcho(dir)
		if err != nil {
			return err
		}
		defer stopEcho()
		const conns, window = 4, 64
		req := make([]byte, 4+1+4+1+1+len(benchenv.SoftKey)+4+64)
		binary.BigEndian.PutUint32(req, uint32(len(req)-4))
		var cs []net.Conn
		for range conns {
			c, err := net.Dial("unix", path)
			if err != nil {
				return err
			}
			defer c.Close()
			cs = append(cs, c)
		}
		for _, c := range cs {
			go func() {
				w := bufio.NewWriter(c)
				r := bufio.NewReader(c)
				reply := make([]byte, replySize)
				for range window {
					w.Write(req)
				}
				for w.Flush() == nil {
					if _, err := io.ReadFull(r, reply); err != nil {
						return
					}
					w.Write(req)
					if r.Buffered() == 0 && w.Flush() != nil {
						return
					}
				}
			}()
		}
		ready(conns)
		<-stop
		return nil
	},

	cpuBurn: func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		n := runtime.NumCPU()
		var done atomic.Bool
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				for x := 0; !done.Load(); x++ {
				}
			})
		}
		ready(n)
		<-stop
		done.Store(true)
		wg.Wait()
		return nil
	},
	// 1,030 connections that never send HELLO.
	"connections": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		conns := holdConns(sock, 1030, nil)
		defer closeAll(conns)
		ready(len(conns))
		<-stop
		return nil
	},
	// 1,000 connections, each announcing a 1 MiB frame and sending all
	// of it but one byte.
	"half_frames": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		const size = 1 << 20
		frame := make([]byte, 4+size-1)
		binary.BigEndian.PutUint32(frame, size)
		frame[4] = byte(wire.TypeMAC)
		conns := holdConns(sock, scaled(1000, scale), func(c net.Conn) {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write(frame)
		})
		defer closeAll(conns)
		ready(len(conns))
		<-stop
		return nil
	},
	// Every context the agent allows, over as many connections as it
	// takes, on the software key.
	"contexts": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		return openContexts(sock, benchenv.SoftKey, scaled(262144, scale), 16384, nil, ready, stop)
	},
	// 16,384 contexts on the PKCS#11 key, one 64 KiB UPDATE each.
	"pkcs11_input": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		return openContexts(sock, benchenv.PKCS11Key, scaled(16384, scale), 16384, make([]byte, 64<<10), ready, stop)
	},
	// Contexts on the PKCS#11 key that each stream a byte past the
	// agent's 64 KiB buffer, which makes them keep a token session until
	// they end: as many as the bench's token has sessions (16).
	"pkcs11_sessions": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		return openContexts(sock, benchenv.PKCS11Key, 16, 16, make([]byte, 64<<10+1), ready, stop)
	},
	// 64 connections that send 20,000 one-shot MACs each, whose replies
	// are longer than the requests, and never read a reply.
	"unread_replies": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		req, _ := (&wire.Message{Type: wire.TypeMAC, ID: 1, Algorithm: 3, Key: []byte(benchenv.SoftKey), Data: []byte("x")}).Append(nil)
		batch := bytes.Repeat(req, 20000)
		var conns []net.Conn
		defer func() { closeAll(conns) }()
		for range scaled(64, scale) {
			rc, err := dialRaw(sock, true)
			if err != nil {
				break
			}
			conns = append(conns, rc.c)
			go func() {
				// Waits once the agent stops reading; ends when the
				// connection is closed.
				rc.c.Write(batch)
			}()
		}
		ready(len(conns))
		<-stop
		return nil
	},
	// Denied GENERATE_KEY and DELETE_KEY, each with a new random name,
	// as fast as the agent answers.
	"denials": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		n := 0
		return flood(sock, 1, stop, ready, func(id uint32) *wire.Message {
			n++
			name := make([]byte, 12)
			rand.Read(name)
			t := wire.TypeGenerateKey
			if n%2 == 0 {
				t = wire.TypeDeleteKey
			}
			return &wire.Message{Type: t, ID: id, Key: []byte("guess-" + hex.EncodeToString(name))}
		})
	},
	// One-shot MACs over almost a megabyte each (the largest frame the
	// agent takes by default) on the software key, from four connections,
	// as fast as the agent answers: each is a millisecond of hashing.
	"big_oneshots": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		data := make([]byte, wire.DefaultMaxFrame-256)
		return flood(sock, 4, stop, ready, func(id uint32) *wire.Message {
			return &wire.Message{Type: wire.TypeMAC, ID: id, Algorithm: 3, Key: []byte(benchenv.SoftKey), Data: data}
		})
	},
	// One-shot MACs on both keys from four connections, 64 in flight on
	// each, as fast as the agent answers.
	"oneshot_flood": func(sock string, scale float64, ready func(held int), stop <-chan struct{}) error {
		data := make([]byte, 64)
		return flood(sock, 4, stop, ready, func(id uint32) *wire.Message {
			key := benchenv.SoftKey
			if id%2 == 0 {
				key = benchenv.PKCS11Key
			}
			return &wire.Message{Type: wire.TypeMAC, ID: id, Algorithm: 3, Key: []byte(key), Data: data}
		})
	},
}

func scaled(n int, scale float64) int { return max(1, int(float64(n)*scale)) }

// holdConns opens up to n raw connections, running each through first.
// Connections the agent refuses are not retried.
func holdConns(sock string, n int, first func(net.Conn)) []net.Conn {
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialTimeout("unix", sock, 5*time.Second)
			if err != nil {
				return
			}
			if first != nil {
				first(c)
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// hostileConn is a raw connection after HELLO whose replies are read and
// dropped by a goroutine of its own, so the attacker never waits on them;
// replies counts them.
type hostileConn struct {
	c       net.Conn
	w       *bufio.Writer
	replies chan struct{}
}

func dialHostile(sock string) (*hostileConn, error) {
	rc, err := dialRaw(sock, true)
	if err != nil {
		return nil, err
	}
	hc := &hostileConn{c: rc.c, w: rc.w, replies: make(chan struct{}, 1<<16)}
	go func() {
		for {
			if _, err := rc.fr.Next(); err != nil {
				close(hc.replies)
				return
			}
			select {
			case hc.replies <- struct{}{}:
			default:
			}
		}
	}()
	return hc, nil
}

func (hc *hostileConn) send(m *wire.Message) error {
	b, err := m.Append(hc.w.AvailableBuffer())
	if err != nil {
		return err
	}
	_, err = hc.w.Write(b)
	return err
}

// openContexts opens n contexts on key, perConn on each connection, with
// one UPDATE of update each when update is not nil, and holds them.
func openContexts(sock, key string, n, perConn int, update []byte, ready func(held int), stop <-chan struct{}) error {
	var conns []*hostileConn
	defer func() {
		for _, hc := range conns {
			hc.c.Close()
		}
	}()
	opened := 0
	for opened < n {
		hc, err := dialHostile(sock)
		if err != nil {
			break // refused: the agent holds what it holds
		}
		conns = append(conns, hc)
		hc.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		for i := 0; i < perConn && opened < n; i++ {
			id := uint32(i + 1)
			if hc.send(&wire.Message{Type: wire.TypeOpen, ID: id, Context: id, Algorithm: 3, Key: []byte(key)}) != nil {
				break
			}
			if update != nil && hc.send(&wire.Message{Type: wire.TypeUpdate, ID: id, Context: id, Data: update}) != nil {
				break
			}
			opened++
		}
		if hc.w.Flush() != nil {
			break
		}
	}
	// The count is of contexts sent; those the agent refused are
	// answered with errors the reader drops.
	ready(opened)
	<-stop
	return nil
}

// flood keeps window requests in flight on each of conns connections,
// made by next, until stop.
func flood(sock string, conns int, stop <-chan struct{}, ready func(held int), next func(id uint32) *wire.Message) error {
	const window = 64
	var hcs []*hostileConn
	for range conns {
		hc, err := dialHostile(sock)
		if err != nil {
			return err
		}
		defer hc.c.Close()
		hcs = append(hcs, hc)
	}
	var wg sync.WaitGroup
	for _, hc := range hcs {
		wg.Go(func() {
			id := uint32(0)
			send := func() bool {
				id++
				return hc.send(next(id)) == nil
			}
			for range window {
				if !send() {
					return
				}
			}
			if hc.w.Flush() != nil {
				return
			}
			for {
				select {
				case <-stop:
					return
				case _, ok := <-hc.replies:
					if !ok || !send() {
						return
					}
					if len(hc.replies) == 0 && hc.w.Flush() != nil {
						return
					}
				}
			}
		})
	}
	ready(len(hcs))
	<-stop
	for _, hc := range hcs {
		hc.c.Close()
	}
	wg.Wait()
	return nil
}
