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
