package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/benchenv"
	"github.com/hmac-agent/hmac-agent/internal/memreturn"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// The hostile-neighbour bench: a victim uid measures one-shot MACs on a
// software and a PKCS#11 key, quiet and under each attack of another uid,
// against an agent at its default limits. Both run as this program, in
// processes of their own under those uids, which needs root.
const (
	victimUID   = 64101
	attackerUID = 64102
	hostileGID  = 64100 // the socket's group; both are in it
)

// hostilePlan is how long the victim measures each key, and how much of
// each attack is mounted.
type hostilePlan struct {
	victim time.Duration
	scale  float64
	settle time.Duration // the longest wait for the agent to let go after an attack
	// attacks are the attacks to run, in attackOrder; nil runs them all.
	attacks []string
}

// processFigures are what the agent holds: resident memory, goroutines
// (from its metrics) and open descriptors.
type processFigures struct {
	rssMiB     float64
	goroutines float64
	fds        float64
}

// hostile runs the quiet phase and each attack, adding hostile_* figures
// to r, and returns a one-line verdict per goal.
func hostile(r *results, p hostilePlan, agentBin string) error {
	if os.Geteuid() != 0 {
		return errors.New("-hostile runs the victim and the attacker as other uids, which needs root")
	}
	if err := softhsm.Available(); err != nil {
		return fmt.Errorf("-hostile measures a PKCS#11 key: %w", err)
	}
	defer benchenv.Cleanup()
	dir, err := os.MkdirTemp("", "hmac-bench-hostile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if agentBin, err = benchenv.AgentBinary(agentBin, dir); err != nil {
		return err
	}
	// The quiet figures, on an agent of their own.
	ag, err := startHostileAgent(agentBin)
	if err != nil {
		return err
	}
	quiet, err := victim(ag.bin, ag.env.Socket, p.victim)
	ag.close()
	if err != nil {
		return err
	}
	recordVictim(r, "quiet", quiet)
	for _, name := range controls {
		if p.attacks == nil || slices.Contains(p.attacks, name) {
			if err := hostileRound(r, p, agentBin, name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}

	// Each attack meets a new agent: what one attack leaves behind (the
	// Go runtime returns freed memory to the system over minutes) is not
	// counted against the next.
	for _, name := range attackOrder {
		if p.attacks != nil && !slices.Contains(p.attacks, name) {
			continue
		}
		if err := hostileRound(r, p, agentBin, name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// hostileAgent is an agent for the hostile bench, with this program
// copied where the victim and attacker uids may run it.
type hostileAgent struct {
	env        *benchenv.Env
	bin        string
	metricsURL string
}

func startHostileAgent(agentBin string) (*hostileAgent, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	env, err := benchenv.Start(benchenv.Options{
		Agent: agentBin, PKCS11: true, DefaultLimits: true,
		SocketGroup: hostileGID, Users: []uint32{victimUID, attackerUID},
		Metrics: "127.0.0.1:" + strconv.Itoa(port),
	})
	if err != nil {
		return nil, err
	}
	ag := &hostileAgent{env: env, bin: filepath.Join(env.Dir, "hostile-role"), metricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", port)}
	self, err := os.Executable()
	if err == nil {
		err = copyExecutable(self, ag.bin)
	}
	if err != nil {
		env.Close()
		return nil, err
	}
	// Warm up both keys, so that no figure holds a first use.
	if _, err := victim(ag.bin, env.Socket, 100*time.Millisecond); err != nil {
		env.Close()
		return nil, err
	}
	return ag, nil
}

func (ag *hostileAgent) close() { ag.env.Close() }

// read reads what the agent holds; the goroutines only with scrape (see
// settle).
func (ag *hostileAgent) read(scrape bool) (processFigures, error) {
	url := ag.metricsURL
	if !scrape {
		url = ""
	}
	return readProcess(ag.env.PID(), url)
}

// hostileRound mounts one attack on a new agent while the victim
// measures, then has the attacker leave and sees what the agent gives
// back.
func hostileRound(r *results, p hostilePlan, agentBin, name string) error {
	ag, err := startHostileAgent(agentBin)
	if err != nil {
		return err
	}
	defer ag.close()
	// The start is measured once the agent has given back what the
	// warm-up left: the same standard "after" is held to. The warm-up
	// includes a scrape of the metrics, as "after" does: the agent's
	// first page builds what every later one reuses (1.5-2.3 MiB of RSS
	// with a PKCS#11 module loaded), which is the observer's cost, not
	// the attacker's.
	if _, err := ag.read(true); err != nil {
		return err
	}
	time.Sleep(memreturn.Settle + time.Second)
	start, err := ag.read(true)
	if err != nil {
		return err
	}
	h := "hostile_" + name + "_"
	r.add(h+"rss_before_mib", "MiB", start.rssMiB)
	r.add(h+"goroutines_before", "goroutines", start.goroutines)
	r.add(h+"fds_before", "fds", start.fds)
	clearPeak(ag.env.PID())
	att, held, err := startAttacker(ag.bin, ag.env.Socket, name, p.scale)
	if err != nil {
		return err
	}
	r.add(h+"attacker_held", "items", held)
	rep, verr := victim(ag.bin, ag.env.Socket, p.victim)
	peak := peakRSS(ag.env.PID())
	under, uerr := ag.read(true)
	att.stop()
	if uerr != nil {
		return uerr
	}
	r.add(h+"goroutines_under", "goroutines", under.goroutines)
	r.add(h+"fds_under", "fds", under.fds)
	if verr != nil {
		return verr
	}
	recordVictim(r, name, rep)
	r.add(h+"peak_rss_mib", "MiB", peak)
	after, err := settle(ag.read, start, p.settle)
	if err != nil {
		return err
	}
	r.add(h+"rss_after_mib", "MiB", after.rssMiB)
	r.add(h+"goroutines_after", "goroutines", after.goroutines)
	r.add(h+"fds_after", "fds", after.fds)
	return nil
}

func recordVictim(r *results, phase string, v victimReport) {
	r.add("hostile_"+phase+"_soft_p50_us", "µs", v.SoftP50)
	r.add("hostile_"+phase+"_soft_p99_us", "µs", v.SoftP99)
	r.add("hostile_"+phase+"_pkcs11_p50_us", "µs", v.PKCS11P50)
	r.add("hostile_"+phase+"_pkcs11_p99_us", "µs", v.PKCS11P99)
	r.add("hostile_"+phase+"_victim_failures", "failures", float64(v.Failures))
	if v.FirstError != "" {
		fmt.Fprintf(os.Stderr, "hmac-bench: -hostile %s: the victim failed %d times (%d MACs answered), first: %s\n", phase, v.Failures, v.Calls-v.Failures, v.FirstError)
	}
}

// roleCommand is this program as the victim or an attacker, under uid.
func roleCommand(bin, sock, role, arg string, uid uint32) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), roleEnv+"="+role, roleSockEnv+"="+sock, roleArgEnv+"="+arg)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{hostileGID}},
		Pdeathsig:  syscall.SIGKILL, // nothing outlives the bench
	}
	return cmd
}

// victim runs the victim for d on each key and returns its report.
func victim(bin, sock string, d time.Duration) (victimReport, error) {
	var rep victimReport
	cmd := roleCommand(bin, sock, "victim", d.String(), victimUID)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return rep, fmt.Errorf("victim: %v: %s", err, stderr.String())
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return rep, fmt.Errorf("victim: %v: %s", err, out)
	}
	return rep, nil
}

type attacker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startAttacker starts an attack and waits until it is in place (at most
// a minute: an agent that takes all it is sent may be slow to take it).
func startAttacker(bin, sock, name string, scale float64) (*attacker, float64, error) {
	cmd := roleCommand(bin, sock, name, strconv.FormatFloat(scale, 'g', -1, 64), attackerUID)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	a := &attacker{cmd: cmd, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Scan()
		line <- sc.Text()
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		n, ok := strings.CutPrefix(l, "ready ")
		held, err := strconv.ParseFloat(n, 64)
		if !ok || err != nil {
			a.stop()
			return nil, 0, fmt.Errorf("attacker: %q", l)
		}
		return a, held, nil
	case <-time.After(time.Minute):
		a.stop()
		return nil, 0, errors.New("attacker not in place within a minute")
	}
}

// stop tells the attacker to leave, and kills it if it does not within
// ten seconds.
func (a *attacker) stop() {
	a.stdin.Close()
	done := make(chan struct{})
	go func() { a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		a.cmd.Process.Kill()
		<-done
	}
}

// settle waits until the agent holds no more memory, goroutines and
// descriptors than at the start plus 10%, or until max, and returns what
// it holds then, or an error if at max that cannot be read. The agent returns memory within memreturn.Interval of
// the attacker's last connection closing; max leaves room for that.
// Memory and descriptors are read from /proc every 200 ms, the
// goroutines from the agent's metrics only once those are back: each
// scrape makes the agent build the page, and a scrape five times a
// second kept its heap cycling through pages that the start, read after
// one scrape, never had (1-3 MiB of the agent's 20).
func settle(read func(scrape bool) (processFigures, error), start processFigures, max time.Duration) (processFigures, error) {
	for end := time.Now().Add(max); ; time.Sleep(200 * time.Millisecond) {
		late := time.Now().After(end)
		f, err := read(false)
		if err == nil && f.fds <= start.fds*1.1 && f.rssMiB <= start.rssMiB*1.1 || late {
			// A figure that could not be read is no figure: zeros (an
			// agent gone, a scrape that failed) would read as "back".
			if f, err = read(true); err != nil && late {
				return f, fmt.Errorf("the agent after the attack: %w", err)
			}
			if err == nil && f.goroutines <= start.goroutines*1.1 || late {
				return f, nil
			}
		}
	}
}

// readProcess reads the agent's RSS and descriptors from /proc and,
// unless metricsURL is empty, its goroutines from its metrics.
func readProcess(pid int, metricsURL string) (processFigures, error) {
	var f processFigures
	var err error
	if f.rssMiB, err = benchenv.RSS(pid); err != nil {
		return f, err
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return f, err
	}
	f.fds = float64(len(fds))
	if metricsURL == "" {
		return f, nil
	}
	hc := http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(metricsURL)
	if err != nil {
		return f, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f.goroutines, err = strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err
		}
	}
	return f, errors.New("the agent's metrics have no go_goroutines")
}

// clearPeak resets the agent's peak RSS (VmHWM), so that peakRSS reads
// the peak of one attack.
func clearPeak(pid int) {
	os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// peakRSS reads the agent's peak RSS since clearPeak, in MiB.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func copyExecutable(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// printHostile prints the hostile figures as a table of phases and the
// goals' verdicts.
func printHostile(r *results) {
	fmt.Printf("%-14s %9s %9s %9s %9s %6s %8s %8s %9s %9s %11s %9s\n", "phase", "soft p50", "soft p99", "p11 p50", "p11 p99",
		"fails", "held", "RSS0 MiB", "peak MiB", "after MiB", "goroutines", "fds")
	fmt.Println("(latencies in µs; goroutines and fds: before, under attack, after)")
	m := r.median
	fmt.Printf("%-14s %9.0f %9.0f %9.0f %9.0f %6.0f\n", "quiet",
		m("hostile_quiet_soft_p50_us"), m("hostile_quiet_soft_p99_us"), m("hostile_quiet_pkcs11_p50_us"), m("hostile_quiet_pkcs11_p99_us"),
		m("hostile_quiet_victim_failures"))
	for _, a := range append(slices.Clone(controls), attackOrder...) {
		h := "hostile_" + a + "_"
		if !r.has(h + "soft_p99_us") {
			continue // not run (-attacks)
		}
		fmt.Printf("%-14s %9.0f %9.0f %9.0f %9.0f %6.0f %8.0f %8.1f %9.1f %9.1f %s %s\n", a,
			m(h+"soft_p50_us"), m(h+"soft_p99_us"), m(h+"pkcs11_p50_us"), m(h+"pkcs11_p99_us"),
			m(h+"victim_failures"), m(h+"attacker_held"), m(h+"rss_before_mib"), m(h+"peak_rss_mib"), m(h+"rss_after_mib"),
			fmt.Sprintf("%.0f/%.0f/%.0f", m(h+"goroutines_before"), m(h+"goroutines_under"), m(h+"goroutines_after")),
			fmt.Sprintf("%.0f/%.0f/%.0f", m(h+"fds_before"), m(h+"fds_under"), m(h+"fds_after")))
	}
	fmt.Println()
	fmt.Println("goals")
	for _, g := range hostileGoals(r) {
		fmt.Println(" ", g)
	}
}

// hostileGoals judges each goal of the hostile bench.
func hostileGoals(r *results) []string {
	m := r.median
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	var out []string
	for _, c := range controls {
		ctl := "hostile_" + c + "_"
		if r.has(ctl + "soft_p99_us") {
			out = append(out, fmt.Sprintf("%-14s (control, never calls the agent) p99 x%.1f soft, x%.1f PKCS#11",
				c, m(ctl+"soft_p99_us")/m("hostile_quiet_soft_p99_us"), m(ctl+"pkcs11_p99_us")/m("hostile_quiet_pkcs11_p99_us")))
		}
	}
	for _, a := range attackOrder {
		h := "hostile_" + a + "_"
		if !r.has(h + "soft_p99_us") {
			continue
		}
		fails := m(h + "victim_failures")
		soft := m(h+"soft_p99_us") / m("hostile_quiet_soft_p99_us")
		p11 := m(h+"pkcs11_p99_us") / m("hostile_quiet_pkcs11_p99_us")
		peak := m(h + "peak_rss_mib")
		back := m(h+"rss_after_mib") <= 1.1*m(h+"rss_before_mib") &&
			m(h+"goroutines_after") <= 1.1*m(h+"goroutines_before") &&
			m(h+"fds_after") <= 1.1*m(h+"fds_before")
		out = append(out, fmt.Sprintf("%-14s victim failures %.0f (%s); p99 x%.1f soft, x%.1f PKCS#11 (<= 5: %s); peak %.0f MiB (< 256: %s); back within 10%%: %s",
			a, fails, verdict(fails == 0), soft, p11, verdict(soft <= 5 && p11 <= 5 && m(h+"soft_p99_us") > 0 && m(h+"pkcs11_p99_us") > 0),
			peak, verdict(peak < 256), verdict(back)))
	}
	return out
}
