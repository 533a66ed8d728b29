package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/benchenv"
)

// hsmStreamPairs is how many direct and agent PKCS#11 streams each run
// measures, one after the other.
const hsmStreamPairs = 5

// measure runs every figure p.runs times into r.
func measure(r *results, p plan, socket, key, agentBin string, devices bool) error {
	dir, err := os.MkdirTemp("", "hmac-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	echo, stopEcho, err := startEcho(dir)
	if err != nil {
		return err
	}
	defer stopEcho()

	var env *benchenv.Env
	if socket == "" {
		// Also when the agent does not start: the token was made first.
		defer benchenv.Cleanup()
		env, err = benchenv.Start(benchenv.Options{Agent: agentBin, PKCS11: devices, TPM: devices, PKCS11MaxCopyBytes: p.maxCopy,
			BeforeAgent: func(e *benchenv.Env) error {
				if e.TPM == nil {
					return nil
				}
				d, err := openTPMDirect(e.TPM)
				if err != nil {
					return fmt.Errorf("go-tpm on swtpm: %w", err)
				}
				defer d.close()
				for range p.runs {
					v, err := d.oneShot(p.dur)
					if err != nil {
						return err
					}
					r.add("tpm_direct_oneshot_ops", "ops/s", v)
					if v, err = d.stream(p.tpm); err != nil {
						return err
					}
					r.add("tpm_direct_stream_mbps", "MB/s", v)
				}
				return nil
			}})
		if err != nil {
			return err
		}
		defer env.Close()
		socket, key = env.Socket, benchenv.SoftKey
		time.Sleep(500 * time.Millisecond)
		v, err := env.RSS()
		if err != nil {
			return err
		}
		r.add("idle_rss_mib", "MiB", v)
		// Before anything else has grown the heap, so that the figure
		// is what the contexts add.
		if err := contextsRSS(r, env, key); err != nil {
			return err
		}
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()

	var hsm *pkcs11Direct
	if env != nil && env.Token != nil {
		if hsm, err = openPKCS11Direct(env.Token); err != nil {
			return fmt.Errorf("miekg/pkcs11 on the token: %w", err)
		}
		defer hsm.close()
		// The first stream into a fresh agent pays the page faults of
		// its copy log's buffers, which later streams reuse: reported
		// apart, so that the runs below measure the steady state.
		v, err := clientStream(c, benchenv.PKCS11Key, p.hsm)
		if err != nil {
			return err
		}
		r.add("pkcs11_stream_first_mbps", "MB/s", v)
	}
	for range p.runs {
		ops, p50, p99, err := pingPong(echo, benchenv.SoftKey, false, p.dur)
		if err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		r.add("echo_pingpong_ops", "ops/s", ops)
		r.add("echo_pingpong_p50_us", "us", p50)
		r.add("echo_pingpong_p99_us", "us", p99)

		ops, p50, p99, err = clientPingPong(c, key, p.dur)
		if err != nil {
			return err
		}
		r.add("oneshot_pingpong_ops", "ops/s", ops)
		r.add("oneshot_pingpong_p50_us", "us", p50)
		r.add("oneshot_pingpong_p99_us", "us", p99)

		ops, _, _, err = pingPong(socket, key, true, p.dur)
		if err != nil {
			return err
		}
		r.add("oneshot_pingpong_raw_ops", "ops/s", ops)

		for _, n := range []int{1, 8, 64} {
			v, err := pipelined(socket, key, n, 256, p.dur)
			if err != nil {
				return fmt.Errorf("pipelined: %w", err)
			}
			name := "oneshot_pipelined_ops"
			if n > 1 {
				name = fmt.Sprintf("oneshot_pipelined_%dconn_ops", n)
			}
			r.add(name, "ops/s", v)
		}
		r.add("inprocess_ops", "ops/s", inProcess(p.dur))

		v, err := clientStream(c, key, p.soft)
		if err != nil {
			return err
		}
		r.add("stream_mbps", "MB/s", v)
		r.add("inprocess_stream_mbps", "MB/s", inProcessStream(p.soft))

		us, err := copyCost(c, key)
		if err != nil {
			return err
		}
		r.add("copy_us", "us", us)

		if hsm != nil {
			mac, verify, stream := pkcs11Figures(hsm, p.dur, p.hsm)
			if err := mac.record(r, c); err != nil {
				return err
			}
			if err := verify.record(r, c); err != nil {
				return err
			}
			for _, w := range []int{8, 64} {
				if v, err = pipelined(socket, benchenv.PKCS11Key, 1, w, p.dur); err != nil {
					return err
				}
				r.add(fmt.Sprintf("pkcs11_oneshot_pipelined_w%d_ops", w), "ops/s", v)
			}
			if v, err = hsm.oneShotConcurrent(8, p.dur); err != nil {
				return err
			}
			r.add("pkcs11_direct_oneshot_8_ops", "ops/s", v)
			if v, err = clientConcurrent(c, benchenv.PKCS11Key, 8, p.dur); err != nil {
				return err
			}
			r.add("pkcs11_oneshot_8_ops", "ops/s", v)
			// A 64 MiB stream lasts under 100 ms, against 2 s for a
			// one-shot figure: alternating pairs give it a like sample.
			for range hsmStreamPairs {
				if err := stream.record(r, c); err != nil {
					return err
				}
			}
		}
		if env != nil && env.TPM != nil {
			if v, _, _, err = clientPingPong(c, benchenv.TPMKey, p.dur); err != nil {
				return err
			}
			r.add("tpm_oneshot_ops", "ops/s", v)
			if v, err = clientStream(c, benchenv.TPMKey, p.tpm); err != nil {
				return err
			}
			r.add("tpm_stream_mbps", "MB/s", v)
		}
	}
	return nil
}

// clientPingPong is one-shot MACs of 64 bytes through the Go client, one
// at a time.
func clientPingPong(c *client.Client, key string, d time.Duration) (ops, p50, p99 float64, err error) {
	ctx := context.Background()
	msg := make([]byte, 64)
	return timeCalls(d, func() error {
		if _, err := c.MAC(ctx, key, client.SHA256, msg); err != nil {
			return fmt.Errorf("MAC with %s: %w", key, err)
		}
		return nil
	})
}

// clientVerifyPingPong is one-shot VerifyMACs of 64 bytes and their tag
// through the Go client, one at a time.
func clientVerifyPingPong(c *client.Client, key string, d time.Duration) (float64, error) {
	ctx := context.Background()
	msg := make([]byte, 64)
	tag, err := c.MAC(ctx, key, client.SHA256, msg)
	if err != nil {
		return 0, fmt.Errorf("MAC with %s: %w", key, err)
	}
	ops, _, _, err := timeCalls(d, func() error {
		if err := c.VerifyMAC(ctx, key, client.SHA256, msg, tag); err != nil {
			return fmt.Errorf("VerifyMAC with %s: %w", key, err)
		}
		return nil
	})
	return ops, err
}

// timeCalls makes call one at a time for d: calls per second, and the
// median and 99th percentile call in µs.
func timeCalls(d time.Duration, call func() error) (ops, p50, p99 float64, err error) {
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	for time.Since(start) < d {
		t := time.Now()
		if err := call(); err != nil {
			return 0, 0, 0, err
		}
		lat = append(lat, time.Since(t))
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	us := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e3 }
	return float64(len(lat)) / elapsed.Seconds(), us(0.5), us(0.99), nil
}

// clientConcurrent is one-shot MACs of 64 bytes from n goroutines sharing
// the client, total ops/s.
func clientConcurrent(c *client.Client, key string, n int, d time.Duration) (float64, error) {
	res := make(chan float64, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			v, _, _, err := clientPingPong(c, key, d)
			if err != nil {
				errs <- err
				return
			}
			res <- v
		}()
	}
	sum := 0.0
	for range n {
		select {
		case v := <-res:
			sum += v
		case err := <-errs:
			return 0, err
		}
	}
	return sum, nil
}

// clientStream streams size bytes in 64 KiB updates and finalizes, MB/s.
func clientStream(c *client.Client, key string, size int) (float64, error) {
	ctx := context.Background()
	chunk := make([]byte, 64<<10)
	start := time.Now()
	h, err := c.New(ctx, key, client.SHA256)
	if err != nil {
		return 0, fmt.Errorf("stream with %s: %w", key, err)
	}
	for n := 0; n < size; n += len(chunk) {
		if err := h.Update(chunk); err != nil {
			return 0, err
		}
	}
	if _, err := h.Finalize(ctx); err != nil {
		return 0, fmt.Errorf("stream with %s: %w", key, err)
	}
	return float64(size) / 1e6 / time.Since(start).Seconds(), nil
}

// copyCost is the mean time of a Copy (and the copy's Close) of a
// software context, in microseconds.
func copyCost(c *client.Client, key string) (float64, error) {
	ctx := context.Background()
	h, err := c.New(ctx, key, client.SHA256)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	h.Update(make([]byte, 1000))
	const n = 2000
	start := time.Now()
	for range n {
		cp, err := h.Copy(ctx)
		if err != nil {
			return 0, err
		}
		cp.Close()
	}
	return float64(time.Since(start).Microseconds()) / n, nil
}

// contextsRSS opens 10 000 software contexts and reads the agent's RSS; it
// closes them when done.
func contextsRSS(r *results, env *benchenv.Env, key string) error {
	ctx := context.Background()
	before, err := env.RSS()
	if err != nil {
		return err
	}
	c, err := client.Dial(ctx, env.Socket)
	if err != nil {
		return err
	}
	defer c.Close()
	for range 10000 {
		h, err := c.New(ctx, key, client.SHA256)
		if err != nil {
			return err
		}
		h.Update(make([]byte, 64))
	}
	c.Status(ctx) // a round trip: every update has been applied
	during, err := env.RSS()
	if err != nil {
		return err
	}
	r.add("contexts_10k_rss_mib", "MiB", during)
	r.add("contexts_10k_added_mib", "MiB", during-before)
	return nil
}
