package providers_test

import (
	"errors"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestBudgetParent: a caller's charge counts against the agent's total
// too, and fails, counting nothing, when either is spent.
func TestBudgetParent(t *testing.T) {
	total := providers.NewBudget(100, nil, "limits.max_bytes")
	a := providers.NewBudget(60, total, "limits.max_bytes_per_uid")
	b := providers.NewBudget(60, total, "limits.max_bytes_per_uid")
	if err := a.Charge(60); err != nil {
		t.Fatal(err)
	}
	if err := a.Charge(1); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("past the caller's bound: %v", err)
	}
	if err := b.Charge(41); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("past the total: %v", err)
	}
	if b.Held() != 0 || total.Held() != 60 {
		t.Errorf("after refusals: caller %d, total %d", b.Held(), total.Held())
	}
	if err := b.Charge(40); err != nil {
		t.Errorf("within both: %v", err)
	}
	a.Release(60)
	b.Release(40)
	if total.Held() != 0 {
		t.Errorf("total %d after every release", total.Held())
	}
	var none *providers.Budget
	if none.Charge(1<<40) != nil || none.Held() != 0 {
		t.Error("a nil budget charges")
	}
}

// TestRefusedChargeNeverCounts: a uid whose charges the agent's total
// keeps refusing never makes the total read above its bound, so another
// uid's charge that fits is never refused meanwhile.
func TestRefusedChargeNeverCounts(t *testing.T) {
	total := providers.NewBudget(100, nil, "limits.max_bytes")
	greedy := providers.NewBudget(1000, total, "limits.max_bytes_per_uid")
	victim := providers.NewBudget(1000, total, "limits.max_bytes_per_uid")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if greedy.Charge(101) == nil {
				t.Error("a charge past the total was taken")
				return
			}
			greedy.ChargeOptional(60) // past half the total: refused too
		}
	}()
	for i := range 200000 {
		if err := victim.Charge(50); err != nil {
			t.Fatalf("charge %d of 50 bytes against a total of 100 holding nothing else: %v", i, err)
		}
		victim.Release(50)
	}
	close(stop)
	<-done
	if total.Held() != 0 || greedy.Held() != 0 {
		t.Errorf("after the refusals: total %d, greedy %d", total.Held(), greedy.Held())
	}
}

// TestUnboundedBudget: a budget of no bound (0 or less) takes every
// charge, optional ones too.
func TestUnboundedBudget(t *testing.T) {
	for _, max := range []int64{0, -1} {
		b := providers.NewBudget(max, nil, "x")
		if b.Charge(1<<30) != nil || b.ChargeOptional(1<<30) != nil || b.Held() != 2<<30 {
			t.Errorf("max %d: held %d", max, b.Held())
		}
	}
}
