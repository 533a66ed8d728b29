//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestInputChargedToBudget: what a context buffers and keeps for Copy is
// charged to the caller's budget, its copies' too; input past the budget
// fails with ErrLimit, and closing gives everything back.
func TestInputChargedToBudget(t *testing.T) {
	p, _ := newToken(t, nil)
	bg := context.Background()
	if _, err := p.ImportKey(bg, "b", make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	k, err := p.Key(bg, "b")
	if err != nil {
		t.Fatal(err)
	}
	budget := providers.NewBudget(1<<20, nil, "test")
	ctx := providers.WithBudget(bg, budget)
	m, err := k.NewMAC(ctx, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(ctx, make([]byte, 16<<10)); err != nil {
		t.Fatal(err)
	}
	// Buffered and logged for Copy: twice the input.
	if held := budget.Held(); held != 32<<10 {
		t.Errorf("%d bytes charged for 16 KiB buffered and logged", held)
	}
	c, err := m.Copy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if held := budget.Held(); held <= 32<<10 {
		t.Errorf("%d bytes charged after a copy", held)
	}
	c.Close()
	// Streaming: the log grows, the buffer is in the token.
	for budget.Held() < 1<<20-64<<10 {
		if err := m.Update(ctx, make([]byte, 64<<10)); err != nil {
			t.Fatalf("update within the budget (%d held): %v", budget.Held(), err)
		}
	}
	err = m.Update(ctx, make([]byte, 128<<10))
	if !errors.Is(err, providers.ErrLimit) {
		t.Errorf("update past the budget: %v", err)
	}
	m.Close()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes charged after Close", held)
	}
}
