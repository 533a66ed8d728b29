package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// scrape reads the whole /metrics page.
func scrape(t *testing.T, m *metrics.Metrics) []byte {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// parse reads a page as Prometheus does and fails the test on anything
// the text format does not allow: a family's HELP or TYPE twice, a sample
// of a family away from its block, a malformed line.
func parse(t *testing.T, page []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		t.Fatalf("the metrics page is not valid text format: %v", err)
	}
	return fams
}

// TestMetricsPageParses serves metrics for an agent with three providers
// (two keystores and a SoftHSM2 token, so that per-provider families have
// several samples) after uses, failures and denials, and reads the whole
// page with the Prometheus text-format parser.
func TestMetricsPageParses(t *testing.T) {
	if err := softhsm.Available(); err != nil {
		if ci() {
			t.Fatalf("CI is set but SoftHSM2 is missing: %v", err)
		}
		t.Skip(err)
	}
	ctx := context.Background()
	tok := softhsm.Require(t, "metrics")
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	spareDir := t.TempDir()
	os.Chmod(spareDir, 0o700)
	spare, err := software.Open("spare", spareDir)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	a := agenttest.Start(t, agenttest.Options{
		Providers: []providers.Provider{hsm, spare},
		Keys: []agent.KeyConfig{
			{Name: "webhook", Provider: "hsm", Policy: agent.OwnerPolicy(0)},
			{Name: "nobody-may", Provider: "soft", Policy: agent.Policy{UIDs: []uint32{4242}, Ops: agent.OpMAC}},
		},
		Observe: m.Observe,
	})
	m.Watch(a.Agent, a.Server)
	if _, err := hsm.ImportKey(ctx, "webhook", bytes.Repeat([]byte("k"), 32)); err != nil {
		t.Fatal(err)
	}
	a.Soft.ImportKey(ctx, "k", []byte("k"))
	a.Soft.ImportKey(ctx, "nobody-may", []byte("k"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, key := range []string{"k", "webhook"} {
		if _, err := c.MAC(ctx, key, client.SHA256, make([]byte, 100)); err != nil {
			t.Fatal(key, err)
		}
		c.VerifyMAC(ctx, key, client.SHA256, nil, []byte("wrong"))
	}
	c.MAC(ctx, "no-such-key", client.SHA256, nil)
	if _, err := c.MAC(ctx, "nobody-may", client.SHA256, nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("MAC with a key root may not use: %v", err)
	}
	h, err := c.New(ctx, "k", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	h.Update(make([]byte, 50))
	// A device request's bytes are released just after its reply is
	// written: the client can have the reply first.
	for end := time.Now().Add(5 * time.Second); a.Server.QueuedBytes() != 0 && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}

	page := scrape(t, m)
	fams := parse(t, page)
	value := func(family string, labels ...string) (float64, bool) {
		f := fams[family]
		if f == nil {
			return 0, false
		}
	next:
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case s.Counter != nil:
				return s.Counter.GetValue(), true
			case s.Gauge != nil:
				return s.Gauge.GetValue(), true
			case s.Histogram != nil:
				return float64(s.Histogram.GetSampleCount()), true
			case s.Untyped != nil:
				return s.Untyped.GetValue(), true
			}
		}
		return 0, false
	}
	for _, w := range []struct {
		family string
		labels []string
		want   float64
	}{
		{"hmac_agent_operations_total", []string{"key", "k", "operation", "mac", "result", "ok"}, 1},
		{"hmac_agent_operations_total", []string{"key", "webhook", "operation", "mac", "result", "ok"}, 1},
		{"hmac_agent_operations_total", []string{"key", "k", "operation", "verify_mac", "result", "invalid_signature"}, 1},
		{"hmac_agent_bytes_total", []string{"key", "k"}, 100},
		{"hmac_agent_denials_total", []string{"operation", "mac"}, 1},
		{"hmac_agent_operation_duration_seconds", []string{"operation", "mac"}, 2},
		{"hmac_agent_connections", nil, 1},
		{"hmac_agent_contexts", nil, 1},
		{"hmac_agent_queued_bytes", nil, 0},
		{"hmac_agent_provider_up", []string{"kind", "software", "provider", "soft"}, 1},
		{"hmac_agent_provider_up", []string{"kind", "software", "provider", "spare"}, 1},
		{"hmac_agent_provider_up", []string{"kind", "pkcs11", "provider", "hsm"}, 1},
		{"hmac_agent_pkcs11_sessions_open", []string{"provider", "hsm"}, -1},
		{"hmac_agent_pkcs11_sessions_in_use", []string{"provider", "hsm"}, -1},
		{"hmac_agent_pkcs11_session_waits_total", []string{"provider", "hsm"}, -1},
		{"hmac_agent_pkcs11_key_copies", []string{"provider", "hsm"}, -1},
	} {
		got, ok := value(w.family, w.labels...)
		if !ok {
			t.Errorf("no sample %s%v", w.family, w.labels)
		} else if w.want >= 0 && got != w.want {
			t.Errorf("%s%v = %v, want %v", w.family, w.labels, got, w.want)
		}
	}
	// The provider's own figures keep their types through the general list.
	for name, typ := range map[string]dto.MetricType{
		"hmac_agent_pkcs11_sessions_open":       dto.MetricType_GAUGE,
		"hmac_agent_pkcs11_session_waits_total": dto.MetricType_COUNTER,
	} {
		if f := fams[name]; f != nil && f.GetType() != typ {
			t.Errorf("family %s is a %s, want a %s", name, f.GetType(), typ)
		}
	}
	for name, f := range fams {
		if f.GetType() == dto.MetricType_UNTYPED {
			t.Errorf("family %s has no TYPE", name)
		}
	}
	for _, f := range []string{"process_resident_memory_bytes", "go_goroutines"} {
		if fams[f] == nil {
			t.Errorf("no %s", f)
		}
	}
	for _, s := range fams["hmac_agent_operations_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "key" && l.GetValue() != "k" && l.GetValue() != "webhook" {
				t.Errorf("a series for key %q, which was only denied or is not registered", l.GetValue())
			}
		}
	}
	if strings.Contains(string(page), "nobody-may") {
		t.Error("the page names a key the caller was denied")
	}
}
