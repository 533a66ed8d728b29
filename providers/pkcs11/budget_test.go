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
	// Streaming: the buffer is in the token, and the log is kept only
	// while the budget is at most half spent; then the context goes on
	// and cannot be copied.
	for range 32 {
		if err := m.Update(ctx, make([]byte, 64<<10)); err != nil {
			t.Fatalf("streaming update (%d held): %v", budget.Held(), err)
		}
	}
	if held := budget.Held(); held > 512<<10 {
		t.Errorf("%d bytes held for copies, more than half the budget", held)
	}
	if _, err := m.Copy(ctx); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("Copy after the log was dropped: %v", err)
	}
	m.Close()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes charged after Close", held)
	}
	// What a context must hold, its buffer, is refused past the budget.
	small := providers.NewBudget(8<<10, nil, "test")
	ctx = providers.WithBudget(bg, small)
	if m, err = k.NewMAC(ctx, providers.SHA256); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Update(ctx, make([]byte, 16<<10)); !errors.Is(err, providers.ErrLimit) {
		t.Errorf("buffering past the budget: %v", err)
	}
}
