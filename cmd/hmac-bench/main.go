// Command hmac-bench measures hmac-agent beside the floor it runs on: a
// raw Unix-socket echo, in-process crypto/hmac, miekg/pkcs11 and go-tpm
// used directly on the same token and TPM. Each figure is the median of
// several runs, and each baseline is measured in the same run.
//
// By default it starts its own agent, with a SoftHSM2 token and a swtpm
// when they are installed. With -socket it measures the software figures
// of a running agent, whose key -key must be a software key the caller may
// use.
//
//	go run ./cmd/hmac-bench            # a readable table, about 2 minutes
//	go run ./cmd/hmac-bench -quick     # under a minute
//	go run ./cmd/hmac-bench -json      # [{"name","value","unit"}, ...]
//	go run ./cmd/hmac-bench -compare OLD_BINARY   # two builds in alternating rounds
//	go run ./cmd/hmac-bench -hostile   # a victim uid under six attacks of another (root)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/benchenv"
	"github.com/hmac-agent/hmac-agent/internal/memreturn"
)

// metric is one figure of the output.
type metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// results collects every run of every figure, for medians.
type results struct {
	order []string
	units map[string]string
	runs  map[string][]float64
}

func (r *results) add(name, unit string, v float64) {
	if _, ok := r.units[name]; !ok {
		r.order = append(r.order, name)
		r.units[name] = unit
	}
	r.runs[name] = append(r.runs[name], v)
}

// has reports whether name was measured.
func (r *results) has(name string) bool { return len(r.runs[name]) > 0 }

func (r *results) median(name string) float64 {
	v := slices.Clone(r.runs[name])
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func main() {
	// The echo server first: the echo control's attacker starts it with
	// its own role in the environment.
	if len(os.Args) == 3 && os.Args[1] == echoArg {
		runEchoServer(os.Args[2])
		return
	}
	runRoleIfAsked()
	quick := flag.Bool("quick", false, "shorter runs: finishes in under a minute")
	asJSON := flag.Bool("json", false, "print a JSON array of {name, value, unit}")
	runs := flag.Int("runs", 3, "runs per figure; the median is reported")
	socket := flag.String("socket", "", "measure a running agent (software figures only)")
	key := flag.String("key", benchenv.SoftKey, "with -socket: a software key to use")
	agentBin := flag.String("agent", "", "the hmac-agent binary to start (default: next to this one, $PATH, or go build)")
	noDevices := flag.Bool("software-only", false, "leave out SoftHSM2 and swtpm even when installed")
	maxCopy := flag.Int64("pkcs11-max-copy-bytes", 0, "the token's max_copy_bytes (0: the default 64 MiB; -1: keep no input for Copy)")
	other := flag.String("compare", "", "another hmac-agent binary: measure the PKCS#11 figures and software pipelining of both, in alternating rounds")
	rounds := flag.Int("rounds", 40, "with -compare: rounds")
	hostileRun := flag.Bool("hostile", false, "a victim uid's one-shot latency, quiet and under six attacks of another uid, and the agent's memory (needs root)")
	attackList := flag.String("attacks", "", "with -hostile: the attacks to run, comma-separated (default: all six)")
	flag.Parse()
	benchenv.StopOnSignal(nil)
	if *hostileRun {
		hp := hostilePlan{victim: 2 * time.Second, scale: 1, settle: 15 * time.Second}
		if *quick {
			// The settle still leaves room for the agent's next return of
			// memory, which may be up to an interval away.
			hp = hostilePlan{victim: 300 * time.Millisecond, scale: 0.1, settle: memreturn.Settle + memreturn.Interval + 2*time.Second}
		}
		if *attackList != "" {
			hp.attacks = strings.Split(*attackList, ",")
			for _, a := range hp.attacks {
				if _, ok := attacks[a]; !ok {
					fmt.Fprintf(os.Stderr, "hmac-bench: unknown attack %q (known: %s)\n", a, strings.Join(attackOrder, ", "))
					os.Exit(2)
				}
			}
		}
		r := &results{units: map[string]string{}, runs: map[string][]float64{}}
		if err := hostile(r, hp, *agentBin); err != nil {
			fmt.Fprintln(os.Stderr, "hmac-bench:", err)
			os.Exit(1)
		}
		if *asJSON {
			var out []metric
			for _, name := range r.order {
				out = append(out, metric{name, r.median(name), r.units[name]})
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			enc.Encode(out)
			return
		}
		printHostile(r)
		return
	}
	if *other != "" {
		if err := compare(os.Stdout, *agentBin, *other, *rounds, 300*time.Millisecond, 64<<20); err != nil {
			fmt.Fprintln(os.Stderr, "hmac-bench:", err)
			os.Exit(1)
		}
		return
	}

	p := plan{dur: 2 * time.Second, soft: 256 << 20, hsm: 64 << 20, tpm: 16 << 20, runs: *runs}
	if *quick {
		p = plan{dur: 400 * time.Millisecond, soft: 64 << 20, hsm: 16 << 20, tpm: 2 << 20, runs: 1}
	}
	r := &results{units: map[string]string{}, runs: map[string][]float64{}}
	p.maxCopy = *maxCopy
	if err := measure(r, p, *socket, *key, *agentBin, !*noDevices); err != nil {
		fmt.Fprintln(os.Stderr, "hmac-bench:", err)
		os.Exit(1)
	}
	var out []metric
	for _, name := range r.order {
		out = append(out, metric{name, r.median(name), r.units[name]})
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return
	}
	printTable(r, out)
}

// plan is how long and how much each run measures.
type plan struct {
	dur            time.Duration
	soft, hsm, tpm int // bytes streamed
	runs           int
	maxCopy        int64 // the token's max_copy_bytes
}

func printTable(r *results, out []metric) {
	fmt.Printf("%-34s %14s  %s\n", "figure", "median", "unit")
	for _, m := range out {
		fmt.Printf("%-34s %14.2f  %s\n", m.Name, m.Value, m.Unit)
	}
	fmt.Println()
	fmt.Println("goals (ratios in this run)")
	ratio := func(label, a, b string, goal float64) {
		x, y := r.median(a), r.median(b)
		if x == 0 || y == 0 {
			return
		}
		verdict := "met"
		if x/y < goal {
			verdict = "NOT met"
		}
		fmt.Printf("  %-46s %6.2f  (goal >= %.2f: %s)\n", label, x/y, goal, verdict)
	}
	ratio("ping-pong one-shot / raw echo", "oneshot_pingpong_ops", "echo_pingpong_ops", 0.9)
	if v := r.median("oneshot_pipelined_ops"); v > 0 {
		verdict := "met"
		if v < 1e6 {
			verdict = "NOT met"
		}
		fmt.Printf("  %-46s %6.2f M ops/s (goal >= 1: %s)\n", "pipelined one-shot, one connection", v/1e6, verdict)
	}
	ratio("software streaming / in-process", "stream_mbps", "inprocess_stream_mbps", 0.7)
	ratio("PKCS#11 one-shot / direct, 1 client", "pkcs11_oneshot_ops", "pkcs11_direct_oneshot_ops", 0.8)
	ratio("PKCS#11 VerifyMAC / direct, 1 client", "pkcs11_verify_ops", "pkcs11_direct_verify_ops", 0.8)
	ratio("PKCS#11 one-shot / direct, 8 clients", "pkcs11_oneshot_8_ops", "pkcs11_direct_oneshot_8_ops", 0.8)
	ratio("PKCS#11 one-shot / direct, 64 in flight", "pkcs11_oneshot_pipelined_w64_ops", "pkcs11_direct_oneshot_ops", 0.8)
	ratio("PKCS#11 streaming / direct", "pkcs11_stream_mbps", "pkcs11_direct_stream_mbps", 0.8)
	ratio("PKCS#11 first stream after start / direct", "pkcs11_stream_first_mbps", "pkcs11_direct_stream_mbps", 0.8)
	ratio("TPM one-shot / direct go-tpm", "tpm_oneshot_ops", "tpm_direct_oneshot_ops", 0.8)
	ratio("TPM streaming / direct go-tpm", "tpm_stream_mbps", "tpm_direct_stream_mbps", 2)
	if v := r.median("idle_rss_mib"); v > 0 {
		fmt.Printf("  %-46s %6.1f MiB (goal <= 20)\n", "idle RSS", v)
	}
	if v := r.median("contexts_10k_added_mib"); v > 0 || r.median("contexts_10k_rss_mib") > 0 {
		fmt.Printf("  %-46s %6.1f MiB (goal <= 40)\n", "added by 10 000 open software contexts", v)
	}
}
