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

// compare measures two agent builds on the PKCS#11 figures, which move by
// a third between full runs: each on a token of its own in one SoftHSM2,
// and in every round the direct baseline and then both agents, one after
// the other, so that both see the same machine. It prints the median
// ratio to direct of each build over the rounds, with the quartiles, to w.
// Each one-shot figure runs for dur, each stream is size bytes.
func compare(w io.Writer, this, other string, rounds int, dur time.Duration, size int) error {
	if rounds < 4 {
		return errors.New("-rounds must be at least 4")
	}
	defer benchenv.Cleanup()
	bins := []string{this, other}
	var clients []*client.Client
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

	figures := []struct {
		name   string
		direct func() (float64, error)
		agent  func(c *client.Client) (float64, error)
	}{
		{"PKCS#11 one-shot MAC, 1 client", func() (float64, error) { return hsm.oneShot(dur) },
			func(c *client.Client) (float64, error) {
				v, _, _, err := clientPingPong(c, benchenv.PKCS11Key, dur)
				return v, err
			}},
		{"PKCS#11 VerifyMAC, 1 client", func() (float64, error) { return hsm.verifyOneShot(dur) },
			func(c *client.Client) (float64, error) { return clientVerifyPingPong(c, benchenv.PKCS11Key, dur) }},
		{"PKCS#11 streaming", func() (float64, error) { return hsm.stream(size) },
			func(c *client.Client) (float64, error) { return clientStream(c, benchenv.PKCS11Key, size) }},
	}
	fmt.Fprintf(w, "%-32s %-24s %-24s\n", "ratio to direct, median (q1-q3)", "this: "+label(this), "other: "+label(other))
	for _, f := range figures {
		ratios := make([][]float64, len(bins))
		for range rounds {
			d, err := f.direct()
			if err != nil {
				return err
			}
			for i, c := range clients {
				v, err := f.agent(c)
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
