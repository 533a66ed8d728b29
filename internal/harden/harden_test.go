//go:build linux

package harden

import "testing"

func TestNoDump(t *testing.T) {
	if err := NoDump(); err != nil {
		t.Fatal(err)
	}
	if d, err := Dumpable(); err != nil || d {
		t.Errorf("dumpable after NoDump: %v %v", d, err)
	}
}
