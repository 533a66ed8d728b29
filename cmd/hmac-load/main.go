// Command hmac-load drives an hmac-agent with many concurrent clients and
// reports errors, throughput and the agent's memory before, during and
// after the load.
//
// By default it starts its own agent (software keystore, plus a SoftHSM2
// token and a swtpm when installed) and runs 1 000 connections × 1 000
// operations: one-shot MACs, streams and copies, spread over the
// providers, each tag checked. With -socket it loads a running agent
// instead, with the keys named by -keys (tags are then not checked).
//
//	go run ./cmd/hmac-load
//	go run ./cmd/hmac-load -conns 100 -ops 100 -json
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/benchenv"
)

type result struct {
	Connections  int              `json:"connections"`
	OpsPerConn   int              `json:"ops_per_connection"`
	Ops          int64            `json:"ops"`
	Errors       int64            `json:"errors"`
	Seconds      float64          `json:"seconds"`
	OpsPerSec    float64          `json:"ops_per_second"`
	RSSBeforeMiB float64          `json:"rss_before_mib"`
	RSSPeakMiB   float64          `json:"rss_peak_mib"`
	RSSAfterMiB  float64          `json:"rss_after_mib"`
	ByKind       map[string]int64 `json:"ops_by_kind"`
	ByKey        map[string]int64 `json:"ops_by_key"`
	FirstErrors  []string         `json:"first_errors,omitempty"`
}

func main() {
	conns := flag.Int("conns", 1000, "concurrent connections")
	ops := flag.Int("ops", 1000, "operations per connection")
	socket := flag.String("socket", "", "load a running agent at this socket instead of starting one")
	keysFlag := flag.String("keys", "", "with -socket: comma-separated keys to use (sha256)")
	agentBin := flag.String("agent", "", "the hmac-agent binary to start (default: next to this one, $PATH, or go build)")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	flag.Parse()
	benchenv.StopOnSignal(nil)

	var env *benchenv.Env
	keys := strings.Split(*keysFlag, ",")
	path := *socket
	check := false
	if path == "" {
		var err error
		env, err = benchenv.Start(benchenv.Options{Agent: *agentBin, PKCS11: true, TPM: true})
		if err != nil {
			benchenv.Cleanup() // the token was made first
			fmt.Fprintln(os.Stderr, "hmac-load:", err)
			os.Exit(1)
		}
		defer benchenv.Cleanup()
		defer env.Close()
		path, keys, check = env.Socket, env.Keys, true
	} else if *keysFlag == "" {
		fmt.Fprintln(os.Stderr, "hmac-load: -socket needs -keys")
		os.Exit(2)
	}
	r := run(path, keys, *conns, *ops, check, env)
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(r)
	} else {
		fmt.Printf("connections × ops      %d × %d = %d operations\n", r.Connections, r.OpsPerConn, r.Ops)
		fmt.Printf("errors                 %d\n", r.Errors)
		fmt.Printf("time                   %.2f s\n", r.Seconds)
		fmt.Printf("throughput             %.0f ops/s\n", r.OpsPerSec)
		fmt.Printf("by kind                %v\n", r.ByKind)
		fmt.Printf("by key                 %v\n", r.ByKey)
		if env != nil {
			fmt.Printf("agent RSS              before %.1f MiB, peak %.1f MiB, after %.1f MiB\n", r.RSSBeforeMiB, r.RSSPeakMiB, r.RSSAfterMiB)
		}
		for _, e := range r.FirstErrors {
			fmt.Println("error:", e)
		}
	}
	if r.Errors > 0 {
		os.Exit(1)
	}
}

// weight spreads operations over keys: the software keystore takes most,
// the devices, being far slower, a share each.
func weight(key string) int {
	switch key {
	case benchenv.PKCS11Key:
		return 7
	case benchenv.TPMKey:
		return 3
	}
	return 90
}

func run(path string, keys []string, conns, ops int, check bool, env *benchenv.Env) result {
	var table []string
	for _, k := range keys {
		for range weight(k) {
			table = append(table, k)
		}
	}
	r := result{Connections: conns, OpsPerConn: ops, ByKind: map[string]int64{}, ByKey: map[string]int64{}}
	var mu sync.Mutex
	var errorsN, done atomic.Int64
	fail := func(err error) {
		errorsN.Add(1)
		mu.Lock()
		if len(r.FirstErrors) < 10 {
			r.FirstErrors = append(r.FirstErrors, err.Error())
		}
		mu.Unlock()
	}
	if env != nil {
		r.RSSBeforeMiB, _ = env.RSS()
	}
	stopSampling := make(chan struct{})
	sampled := make(chan float64)
	go func() { // the agent's peak RSS during the load
		peak := 0.0
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSampling:
				sampled <- peak
				return
			case <-t.C:
				if env != nil {
					if v, err := env.RSS(); err == nil && v > peak {
						peak = v
					}
				}
			}
		}
	}()

	start := time.Now()
	var wg sync.WaitGroup
	kinds := make([]map[string]int64, conns)
	byKey := make([]map[string]int64, conns)
	for i := range conns {
		kinds[i], byKey[i] = map[string]int64{}, map[string]int64{}
		wg.Go(func() {
			ctx := context.Background()
			c, err := client.Dial(ctx, path)
			for tries := 0; err != nil && tries < 50; tries++ { // a full listen backlog
				time.Sleep(20 * time.Millisecond)
				c, err = client.Dial(ctx, path)
			}
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			for j := range ops {
				n := i*ops + j
				key := table[(n*7919)%len(table)]
				kind := [...]string{"oneshot", "oneshot", "oneshot", "oneshot", "stream", "stream", "copy"}[n%7]
				if err := operate(ctx, c, key, kind, n, check); err != nil {
					fail(fmt.Errorf("%s on %s: %w", kind, key, err))
				}
				kinds[i][kind]++
				byKey[i][key]++
				done.Add(1)
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	close(stopSampling)
	r.RSSPeakMiB = <-sampled
	for i := range conns {
		for k, v := range kinds[i] {
			r.ByKind[k] += v
		}
		for k, v := range byKey[i] {
			r.ByKey[k] += v
		}
	}
	r.Ops, r.Errors = done.Load(), errorsN.Load()
	r.OpsPerSec = float64(r.Ops) / r.Seconds
	if env != nil {
		time.Sleep(3 * time.Second) // the connections close; the agent frees and returns memory
		r.RSSAfterMiB, _ = env.RSS()
	}
	return r
}

func want(msg []byte) []byte {
	h := hmac.New(sha256.New, benchenv.Secret)
	h.Write(msg)
	return h.Sum(nil)
}

// operate runs one operation and, with check, compares the tag with
// crypto/hmac.
func operate(ctx context.Context, c *client.Client, key, kind string, n int, check bool) error {
	msg := fmt.Appendf(nil, "load message %d", n)
	switch kind {
	case "oneshot":
		tag, err := c.MAC(ctx, key, client.SHA256, msg)
		if err != nil {
			return err
		}
		if check && !bytes.Equal(tag, want(msg)) {
			return fmt.Errorf("wrong tag")
		}
	case "stream":
		h, err := c.New(ctx, key, client.SHA256)
		if err != nil {
			return err
		}
		part := bytes.Repeat(msg, 256)
		for range 4 {
			h.Update(part)
		}
		if check {
			return h.Verify(ctx, want(bytes.Repeat(part, 4)))
		}
		_, err = h.Finalize(ctx)
		return err
	case "copy":
		h, err := c.New(ctx, key, client.SHA256)
		if err != nil {
			return err
		}
		h.Update(msg)
		cp, err := h.Copy(ctx)
		if err != nil {
			h.Close()
			return err
		}
		h.Update([]byte("a"))
		cp.Update([]byte("b"))
		t1, err := h.Finalize(ctx)
		if err != nil {
			cp.Close()
			return err
		}
		t2, err := cp.Finalize(ctx)
		if err != nil {
			return err
		}
		if check && (!bytes.Equal(t1, want(append(msg, 'a'))) || !bytes.Equal(t2, want(append(msg, 'b')))) {
			return fmt.Errorf("wrong tag after copy")
		}
	}
	return nil
}
