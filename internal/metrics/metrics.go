// Package metrics exports the agent's Prometheus metrics: operations by
// key, operation and result, their latency, bytes, open connections and
// contexts, PKCS#11 sessions, TPM slot swaps and provider health, uses
// by key version and the verifications only an older version satisfied
// (which tell an operator when a version is safe to retire), and the Go
// runtime's and the process's own.
//
// It is built on VictoriaMetrics/metrics rather than client_golang: the
// text format is all the agent serves, and client_golang with its
// protobuf dependency made the binary 4.7 MB larger, memory that is
// resident in every agent.
//
// A Metrics is safe for concurrent use.
package metrics

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// latencyBuckets are 5 µs to about 80 s, by factors of 4: from a software
// one-shot to a long stream.
var latencyBuckets = func() []float64 {
	b := make([]float64, 12)
	for i, v := 0, 5e-6; i < len(b); i, v = i+1, v*4 {
		b[i] = v
	}
	return b
}()

// Metrics holds the agent's metrics in a set of its own.
type Metrics struct {
	set *vm.Set

	mu      sync.RWMutex
	ops     map[opSeries]*vm.Counter
	bytes   map[string]*vm.Counter
	latency map[string]*vm.PrometheusHistogram
	// versions counts uses by key version; previous the verifications
	// satisfied by a version other than the current one.
	versions map[versionSeries]*vm.Counter
	previous map[versionSeries]*vm.Counter
}

type opSeries struct{ key, op, result string }

type versionSeries struct {
	key, op string
	version int
}

// New makes the metrics. Observe must be given to the agent as its
// observer; Watch adds the values read from a running agent and server.
func New() *Metrics {
	vm.ExposeMetadata(true) // TYPE lines, so counters and histograms are typed
	return &Metrics{
		set:     vm.NewSet(),
		ops:     make(map[opSeries]*vm.Counter),
		bytes:   make(map[string]*vm.Counter),
		latency: make(map[string]*vm.PrometheusHistogram),

		versions: make(map[versionSeries]*vm.Counter),
		previous: make(map[versionSeries]*vm.Counter),
	}
}

// Observe records a key use; give it to the agent as Options.Observe.
func (m *Metrics) Observe(u agent.Use) {
	result := providers.ErrorName(u.Err)
	if result == "" {
		result = "error"
	}
	s := opSeries{u.Key, u.Operation, result}
	m.mu.RLock()
	ops, bytes, latency := m.ops[s], m.bytes[u.Key], m.latency[u.Operation]
	m.mu.RUnlock()
	if ops == nil || bytes == nil || latency == nil {
		ops, bytes, latency = m.series(s)
	}
	ops.Inc()
	if u.Duration > 0 {
		latency.Update(u.Duration.Seconds())
	}
	if u.Bytes > 0 {
		bytes.AddInt64(u.Bytes)
	}
	if u.Version > 0 {
		m.observeVersion(u)
	}
}

func (m *Metrics) observeVersion(u agent.Use) {
	vs := versionSeries{u.Key, u.Operation, u.Version}
	m.mu.RLock()
	uses, prev := m.versions[vs], m.previous[versionSeries{u.Key, "", u.Version}]
	m.mu.RUnlock()
	if uses == nil || (u.Previous && prev == nil) {
		m.mu.Lock()
		if uses = m.versions[vs]; uses == nil {
			uses = m.set.GetOrCreateCounter(name("hmac_agent_key_version_uses_total", "key", u.Key, "operation", u.Operation, "version", strconv.Itoa(u.Version)))
			m.versions[vs] = uses
		}
		if u.Previous {
			pvs := versionSeries{u.Key, "", u.Version}
			if prev = m.previous[pvs]; prev == nil {
				prev = m.set.GetOrCreateCounter(name("hmac_agent_previous_version_verifications_total", "key", u.Key, "version", strconv.Itoa(u.Version)))
				m.previous[pvs] = prev
			}
		}
		m.mu.Unlock()
	}
	uses.Inc()
	if u.Previous {
		prev.Inc()
	}
}

// series makes the series of a key use seen for the first time. The set
// formats and parses their names; the maps spare every later use that.
func (m *Metrics) series(s opSeries) (*vm.Counter, *vm.Counter, *vm.PrometheusHistogram) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ops[s] == nil {
		m.ops[s] = m.set.GetOrCreateCounter(name("hmac_agent_operations_total", "key", s.key, "operation", s.op, "result", s.result))
	}
	if m.bytes[s.key] == nil {
		m.bytes[s.key] = m.set.GetOrCreateCounter(name("hmac_agent_bytes_total", "key", s.key))
	}
	if m.latency[s.op] == nil {
		m.latency[s.op] = m.set.GetOrCreatePrometheusHistogramExt(
			name("hmac_agent_operation_duration_seconds", "operation", s.op), latencyBuckets)
	}
	return m.ops[s], m.bytes[s.key], m.latency[s.op]
}

// name is a series name: the metric and its labels, given as name, value
// pairs in the order the text format lists them (sorted).
func name(metric string, labels ...string) string {
	var b strings.Builder
	b.WriteString(metric)
	for i := 0; i < len(labels); i += 2 {
		if i == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(labels[i])
		b.WriteString(`="`)
		b.WriteString(labelEscaper.Replace(strings.ToValidUTF8(labels[i+1], "\uFFFD")))
		b.WriteByte('"')
	}
	if len(labels) > 0 {
		b.WriteByte('}')
	}
	return b.String()
}

// labelEscaper escapes a label value as the text format wants. Key names
// are an administrator's, but PKCS#11 labels may hold anything.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// Server is what the metrics read from the socket server.
type Server interface {
	Connections() int
	QueuedBytes() int
}

// Watch adds values read at each scrape from the agent, the server and the
// agent's providers.
func (m *Metrics) Watch(a *agent.Agent, srv Server) {
	m.set.RegisterMetricsWriter(func(w io.Writer) {
		vm.WriteGaugeUint64(w, "hmac_agent_connections", uint64(srv.Connections()))
		vm.WriteGaugeUint64(w, "hmac_agent_queued_bytes", uint64(srv.QueuedBytes()))
		vm.WriteGaugeUint64(w, "hmac_agent_contexts", uint64(a.Contexts()))
	})
	for _, p := range a.Providers() {
		labels := []string{"kind", p.Kind(), "provider", p.Name()}
		m.set.RegisterMetricsWriter(func(w io.Writer) {
			up := uint64(1)
			if !a.Healthy(p) { // as last probed: a scrape never waits on a device
				up = 0
			}
			vm.WriteGaugeUint64(w, name("hmac_agent_provider_up", labels...), up)
		})
		if hp, ok := p.(interface{ Sessions() pkcs11.SessionStats }); ok {
			m.set.RegisterMetricsWriter(func(w io.Writer) {
				st := hp.Sessions()
				vm.WriteGaugeUint64(w, name("hmac_agent_pkcs11_sessions_open", labels...), uint64(st.Open))
				vm.WriteGaugeUint64(w, name("hmac_agent_pkcs11_sessions_in_use", labels...), uint64(st.InUse))
				vm.WriteCounterUint64(w, name("hmac_agent_pkcs11_session_waits_total", labels...), st.Waits)
				vm.WriteGaugeUint64(w, name("hmac_agent_pkcs11_key_copies", labels...), uint64(st.Copies))
			})
		}
		if sw, ok := p.(interface{ Swaps() uint64 }); ok {
			m.set.RegisterMetricsWriter(func(w io.Writer) {
				vm.WriteCounterUint64(w, name("hmac_agent_tpm_slot_swaps_total", labels...), sw.Swaps())
			})
		}
	}
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		m.set.WritePrometheus(w)
		vm.WriteProcessMetrics(w)
	})
}
