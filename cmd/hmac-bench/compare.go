package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/benchenv"
)

// compare measures two agent builds on the figures that move most between
// full runs: each build on a token of its own in one SoftHSM2, and in
// every round the direct baseline and then both agents, one after the
// other, so that both see the same machine. It prints, to w, the median
// ratio to direct of each build over the rounds with its quartiles, or
// for the software figure, which has no baseline here, the median rate.
// Each one-shot figure runs for dur, each stream is size bytes.
func compare(w io.Writer, this, other string, rounds int, dur time.Duration, size int) error {
	if rounds < 4 {
		return errors.New("-rounds must be at least 4")
	}
	defer benchenv.Cleanup()
	bins := []string{this, other}
	var clients []*client.Client
	var sockets []string
	var first *benchenv.Env
	for _, bin := range bins {
		env, err := benchenv.Start(benchenv.Options{Agent: bin, PKCS11: true})
		if err != nil {
			return err
		}
		defer env.Close()
		if env.Token == nil {
			return errors.New("-compare needs SoftHSM2 (apt-get install softhsm2)")
		}
		if first == nil {
			first = env
		}
		sockets = append(sockets, env.Socket)
		c, err := client.Dial(context.Background(), env.Socket)
		if err != nil {
			return err
		}
		defer c.Close()
		clients = append(clients, c)
	}
	hsm, err := openPKCS11Direct(first.Token)
	if err != nil {
		return err
	}
	defer hsm.close()

	type figure struct {
		name   string
		direct func() (float64, error) // nil: none, the rate is shown
		agent  func(i int) (float64, error)
	}
	figures := []figure{{"software pipelined, M ops/s", nil,
		func(i int) (float64, error) {
			v, err := pipelined(sockets[i], benchenv.SoftKey, 1, 256, dur)
			return v / 1e6, err
		}}}
	mac, verify, stream := pkcs11Figures(hsm, dur, size)
	for _, f := range []pkcs11Figure{mac, verify, stream} {
		figures = append(figures, figure{f.label, f.measureDirect,
			func(i int) (float64, error) { return f.measureAgent(clients[i]) }})
	}
	fmt.Fprintf(w, "%-32s %-24s %-24s\n", "median (q1-q3), ratio to direct", "this: "+label(this), "other: "+label(other))
	for _, f := range figures {
		ratios := make([][]float64, len(bins))
		for range rounds {
			d := 1.0
			if f.direct != nil {
				var err error
				if d, err = f.direct(); err != nil {
					return err
				}
			}
			for i := range bins {
				v, err := f.agent(i)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", f.name, bins[i], err)
				}
				ratios[i] = append(ratios[i], v/d)
			}
		}
		fmt.Fprintf(w, "%-32s %-24s %-24s\n", f.name, quartiles(ratios[0]), quartiles(ratios[1]))
	}
	return nil
}

func label(bin string) string {
	if bin == "" {
		return "default"
	}
	return bin
}

func quartiles(v []float64) string {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	return fmt.Sprintf("%.2f (%.2f-%.2f)", v[n/2], v[n/4], v[3*n/4])
}
