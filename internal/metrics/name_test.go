package metrics

import (
	"testing"

	vm "github.com/VictoriaMetrics/metrics"
)

func TestSeriesNamesEscapeLabelValues(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"plain", `m{key="plain"}`},
		{`a"b`, `m{key="a\"b"}`},
		{`a\b`, `m{key="a\\b"}`},
		{"a\nb", `m{key="a\nb"}`},
		{"a\xffb", "m{key=\"a\uFFFDb\"}"},
	} {
		got := name("m", "key", tc.value)
		if got != tc.want {
			t.Errorf("name(%q) = %s, want %s", tc.value, got, tc.want)
		}
		if err := vm.ValidateMetric(got); err != nil {
			t.Errorf("name(%q) is not a valid series: %v", tc.value, err)
		}
	}
	if got := name("m"); got != "m" {
		t.Errorf("no labels: %s", got)
	}
}
