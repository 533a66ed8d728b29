package providers_test

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// The agent's default bounds (agent.DefaultLimits): the total, one uid's,
// and what follows from them: the shared part of the total and the most a
// light uid holds.
const (
	maxBytes       = 256 << 20
	maxBytesPerUID = 64 << 20
	shared         = maxBytes - maxBytes/providers.ReservedShare // 224 MiB
	light          = maxBytes / providers.LightHolding           // 4 MiB
)

func uidBudgets(total *providers.Budget, n int) []*providers.Budget {
	b := make([]*providers.Budget, n)
	for i := range b {
		b[i] = providers.NewBudget(maxBytesPerUID, total, "limits.max_bytes_per_uid")
	}
	return b
}

// fill charges b step bytes at a time until it is refused, and returns
// the refusal.
func fill(t *testing.T, b *providers.Budget, step int) error {
	t.Helper()
	for range maxBytes/step + 1 {
		if err := b.Charge(step); err != nil {
			return err
		}
	}
	t.Fatalf("%d charges of %d bytes all taken", maxBytes/step+1, step)
	return nil
}

// TestBudgetReserveForLightCallers: four uids at their bounds (64 MiB
// each, the attack's 64 connections with a half-sent 1 MiB frame) fill
// only the total's shared part; a fifth uid is served from the reserve,
// up to what a light caller holds, and the heavy uids get none of it
// however small their steps. Light uids together fill the reserve to
// the total's bound and never past it.
func TestBudgetReserveForLightCallers(t *testing.T) {
	if light < providers.MinLightHolding {
		t.Fatalf("light holding %d below its floor at the defaults", light)
	}
	total := providers.NewBudget(maxBytes, nil, "limits.max_bytes")
	heavy := uidBudgets(total, 4)
	for i, h := range heavy {
		err := fill(t, h, 1<<20)
		if !errors.Is(err, providers.ErrLimit) {
			t.Fatalf("heavy uid %d: %v", i, err)
		}
		if i == 3 && !strings.Contains(err.Error(), "limits.max_bytes)") {
			t.Errorf("the last heavy uid, refused by the total's shared part: %v", err)
		}
	}
	if got := total.Held(); got != shared {
		t.Fatalf("heavy uids hold %d together, want the shared part, %d", got, shared)
	}
	for i, h := range heavy {
		for _, step := range []int{1 << 20, 4096, 1} {
			if err := h.Charge(step); !errors.Is(err, providers.ErrLimit) {
				t.Errorf("heavy uid %d holding %d, a charge of %d into the reserve: %v", i, h.Held(), step, err)
			}
		}
	}

	// A fifth uid: root's status (a request's 5 KiB), a 100 KB MAC, a
	// 1 MiB frame read in doublings from 64 KiB and the request it makes.
	fifth := uidBudgets(total, 1)[0]
	for _, n := range []int{5 << 10, 100_000} {
		if err := fifth.Charge(n); err != nil {
			t.Fatalf("light uid, %d bytes with heavy uids at the shared part: %v", n, err)
		}
		fifth.Release(n)
	}
	for charged := 0; charged < 1<<20; {
		step := max(charged, 64<<10)
		if err := fifth.Charge(step); err != nil {
			t.Fatalf("light uid's 1 MiB frame at %d bytes: %v", charged, err)
		}
		charged += step
	}
	if err := fifth.Charge(1<<20 + 5<<10); err != nil {
		t.Fatalf("light uid's request of 1 MiB: %v", err)
	}
	// Up to a light caller's holding, not past it.
	rest := int(light - fifth.Held())
	if err := fifth.Charge(rest + 1); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("light uid past %d bytes in the reserve: %v", light, err)
	}
	if err := fifth.Charge(rest); err != nil {
		t.Errorf("light uid up to %d bytes: %v", light, err)
	}
	if err := fifth.Charge(1); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("light uid at %d, one more byte: %v", fifth.Held(), err)
	}
	// Input kept only for copies still stops at half of each budget.
	if err := fifth.ChargeOptional(1); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("optional bytes with the total past half: %v", err)
	}

	// Light uids fill the reserve (at least reserve/light of them are
	// needed); the total reaches its bound and no further.
	lights := uidBudgets(total, maxBytes/providers.ReservedShare/light-1)
	for i, l := range lights {
		if err := l.Charge(light); err != nil {
			t.Fatalf("light uid %d of %d: %v", i+2, len(lights)+1, err)
		}
	}
	if got := total.Held(); got != maxBytes {
		t.Fatalf("total %d with the reserve full, want %d", got, maxBytes)
	}
	late := uidBudgets(total, 1)[0]
	if err := late.Charge(1); !errors.Is(err, providers.ErrLimit) || late.Held() != 0 {
		t.Errorf("a charge past the total's bound: %v, holding %d", err, late.Held())
	}

	// A heavy uid that lets go of most of what it held is light again.
	heavy[0].Release(int(heavy[0].Held()))
	if err := heavy[0].Charge(1 << 20); err != nil {
		t.Errorf("a uid holding nothing any more: %v", err)
	}
	for _, b := range append(append(heavy, lights...), fifth) {
		b.Release(int(b.Held()))
	}
	if total.Held() != 0 {
		t.Errorf("total %d after every release", total.Held())
	}
}

// TestBudgetWithoutChildrenTakesAll: charges made to a budget itself,
// not through a child (a lone uid's budget, the total charged directly),
// may take all of it, as before.
func TestBudgetWithoutChildrenTakesAll(t *testing.T) {
	total := providers.NewBudget(maxBytes, nil, "limits.max_bytes")
	if err := fill(t, total, 1<<20); !errors.Is(err, providers.ErrLimit) || total.Held() != maxBytes {
		t.Errorf("direct charges: %v, holding %d of %d", err, total.Held(), maxBytes)
	}
	total.Release(maxBytes)
	if err := total.ChargeOptional(maxBytes/2 + 1); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("optional bytes past half: %v", err)
	}
	if err := total.ChargeOptional(maxBytes / 2); err != nil {
		t.Errorf("optional bytes up to half: %v", err)
	}
}

// TestBudgetReserveConcurrent: heavy uids charge and release in small
// steps from many goroutines while light uids charge; the total never
// passes its bound, no light uid's charge is ever refused (the heavy
// uids never reach into the reserve), and every byte comes back. Run it
// with -race.
func TestBudgetReserveConcurrent(t *testing.T) {
	total := providers.NewBudget(maxBytes, nil, "limits.max_bytes")
	heavy := uidBudgets(total, 4)
	const base = 2 * light // each heavy uid holds this throughout: never light
	for _, h := range heavy {
		if err := h.Charge(base); err != nil {
			t.Fatal(err)
		}
	}
	lights := uidBudgets(total, 3) // 3 × 3 MiB at most: well within the reserve
	var stop atomic.Bool
	var heavyTaken, heavyRefused atomic.Int64
	var heavyWG, lightWG sync.WaitGroup
	for i, h := range heavy {
		for g := range 4 {
			heavyWG.Go(func() {
				r := rand.New(rand.NewPCG(uint64(i), uint64(g)))
				var held []int
				for !stop.Load() {
					if len(held) > 0 && r.IntN(3) == 0 {
						k := r.IntN(len(held))
						h.Release(held[k])
						held[k] = held[len(held)-1]
						held = held[:len(held)-1]
						continue
					}
					n := 1 + r.IntN(64<<10)
					if r.IntN(4) == 0 {
						n = 1
					}
					if h.Charge(n) == nil {
						held = append(held, n)
						heavyTaken.Add(1)
					} else {
						heavyRefused.Add(1)
					}
				}
				for _, n := range held {
					h.Release(n)
				}
			})
		}
	}
	heavyWG.Go(func() { // the bound, watched throughout
		for !stop.Load() {
			if v := total.Held(); v > maxBytes {
				t.Errorf("total %d past its bound %d", v, maxBytes)
				return
			}
		}
	})
	for i, l := range lights {
		lightWG.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 99))
			var held []int
			sum := 0
			for range 20000 {
				if n := 1 + r.IntN(256<<10); sum+n <= 3<<20 {
					if err := l.Charge(n); err != nil {
						t.Errorf("light uid %d holding %d, a charge of %d: %v (total %d)", i, sum, n, err, total.Held())
						break
					}
					held = append(held, n)
					sum += n
					continue
				}
				for _, n := range held {
					l.Release(n)
				}
				held, sum = held[:0], 0
			}
			for _, n := range held {
				l.Release(n)
			}
		})
	}
	lightWG.Wait()
	stop.Store(true)
	heavyWG.Wait()
	t.Logf("heavy charges: %d taken, %d refused", heavyTaken.Load(), heavyRefused.Load())
	if heavyRefused.Load() == 0 {
		t.Error("the heavy uids were never refused: they did not fill the shared part")
	}
	for i, h := range heavy {
		if h.Held() != base {
			t.Errorf("heavy uid %d holds %d after its goroutines, want %d", i, h.Held(), base)
		}
		h.Release(base)
	}
	for i, l := range lights {
		if l.Held() != 0 {
			t.Errorf("light uid %d holds %d", i, l.Held())
		}
	}
	if total.Held() != 0 {
		t.Errorf("total %d after every release", total.Held())
	}
}
