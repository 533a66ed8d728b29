package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/benchenv"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
)

func TestMain(m *testing.M) {
	// The echo server runs as this binary in a process of its own, for
	// the echo baseline and for the echo control's attacker, whose role
	// it inherits in its environment: it comes first.
	if len(os.Args) == 3 && os.Args[1] == echoArg {
		runEchoServer(os.Args[2])
		return
	}
	runRoleIfAsked()
	os.Exit(m.Run())
}

// TestEveryFigureIsMeasured runs the whole bench, briefly, and checks that
// every figure it promises comes out. It times nothing.
func TestEveryFigureIsMeasured(t *testing.T) {
	names := []string{
		"oneshot_pingpong_ops", "echo_pingpong_ops", "oneshot_pipelined_ops",
		"oneshot_pipelined_8conn_ops", "oneshot_pipelined_64conn_ops",
		"inprocess_ops", "stream_mbps", "inprocess_stream_mbps", "copy_us",
		"idle_rss_mib", "contexts_10k_rss_mib", "contexts_10k_added_mib",
	}
	devices := softhsm.Available() == nil && swtpm.Available() == nil
	if !devices && os.Getenv("CI") != "" {
		t.Fatalf("CI is set and SoftHSM2 or swtpm is missing: %v %v", softhsm.Available(), swtpm.Available())
	}
	if devices {
		names = append(names,
			"pkcs11_oneshot_ops", "pkcs11_direct_oneshot_ops", "pkcs11_verify_ops", "pkcs11_direct_verify_ops",
			"pkcs11_oneshot_8_ops", "pkcs11_direct_oneshot_8_ops",
			"pkcs11_oneshot_pipelined_w8_ops", "pkcs11_oneshot_pipelined_w64_ops",
			"pkcs11_stream_mbps", "pkcs11_direct_stream_mbps", "pkcs11_stream_first_mbps",
			"tpm_oneshot_ops", "tpm_direct_oneshot_ops", "tpm_stream_mbps", "tpm_direct_stream_mbps")
	}
	r := &results{units: map[string]string{}, runs: map[string][]float64{}}
	p := plan{dur: 50 * time.Millisecond, soft: 1 << 20, hsm: 1 << 20, tpm: 64 << 10, runs: 1}
	if err := measure(r, p, "", benchenv.SoftKey, "", devices); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if v := r.median(name); v <= 0 {
			t.Errorf("%s: %v", name, v)
		}
	}
}

// TestCompare runs -compare briefly, the same build against itself, and
// checks that each figure has a ratio for both. It times nothing. It runs
// in a process of its own: SoftHSM2 reads its configuration once per
// process, and the whole bench's run has removed the one this process had.
func TestCompare(t *testing.T) {
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and SoftHSM2 is missing: %v", err)
		}
		t.Skipf("SoftHSM2 is not installed: %v", err)
	}
	if os.Getenv("HMAC_BENCH_COMPARE_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCompare$", "-test.v")
		cmd.Env = append(os.Environ(), "HMAC_BENCH_COMPARE_CHILD=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		return
	}
	var out strings.Builder
	if err := compare(&out, "", "", 4, 30*time.Millisecond, 1<<20); err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(rows) != 5 {
		t.Fatalf("got %d lines, want a heading and 4 figures:\n%s", len(rows), out.String())
	}
	for _, row := range rows[1:] {
		if n := strings.Count(row, "("); n != 2 {
			t.Errorf("row without both builds' ratios: %q", row)
		}
	}
}

// TestHostileQuick runs -hostile -quick in a process of its own (the
// victim and the attacker are further processes under other uids) and
// checks that every figure comes out for the quiet phase and each attack,
// and that the attackers were in place. It judges no goal: the figures
// are reported, not asserted.
func TestHostileQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the tests do not run as root; -hostile runs its victim and attacker as other uids")
		}
		t.Skip("-hostile needs root")
	}
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and SoftHSM2 is missing: %v", err)
		}
		t.Skipf("SoftHSM2 is not installed: %v", err)
	}
	if os.Getenv("HMAC_BENCH_HOSTILE_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHostileQuick$", "-test.v")
		cmd.Env = append(os.Environ(), "HMAC_BENCH_HOSTILE_CHILD=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		} else {
			t.Logf("%s", out)
		}
		return
	}
	r := &results{units: map[string]string{}, runs: map[string][]float64{}}
	if err := hostile(r, hostilePlan{victim: 200 * time.Millisecond, scale: 0.02, settle: time.Second}, ""); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"soft_p50_us", "soft_p99_us", "pkcs11_p50_us", "pkcs11_p99_us"} {
		if v := r.median("hostile_quiet_" + k); v <= 0 {
			t.Errorf("hostile_quiet_%s: %v", k, v)
		}
	}
	for _, a := range attackOrder {
		for _, k := range []string{"peak_rss_mib", "rss_before_mib", "rss_after_mib", "goroutines_before", "goroutines_under",
			"goroutines_after", "fds_before", "fds_under", "fds_after", "attacker_held"} {
			if v := r.median("hostile_" + a + "_" + k); v <= 0 {
				t.Errorf("hostile_%s_%s: %v", a, k, v)
			}
		}
		for _, k := range []string{"soft_p50_us", "soft_p99_us", "pkcs11_p50_us", "pkcs11_p99_us", "victim_failures"} {
			if _, ok := r.units["hostile_"+a+"_"+k]; !ok {
				t.Errorf("no hostile_%s_%s", a, k)
			}
		}
	}
	var out strings.Builder
	for _, g := range hostileGoals(r) {
		out.WriteString(g + "\n")
	}
	t.Logf("goals as measured in this short run:\n%s", out.String())
}
