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
// # What a caller can grow
//
// Nothing a caller sends makes a new series. Per-key series exist only for
// keys in the agent's registry (configured keys and keys a provider
// holds); a use under any other name counts under the key "other".
// Denials are counted by operation alone, since the name a denied caller
// sent is of its own choosing. Every other label takes its values from a
// fixed set: operations, error names, providers.
//
// A Metrics is safe for concurrent use.
package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
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
	denials map[string]*vm.Counter // by operation
	// versions counts uses by key version; previous the verifications
	// satisfied by a version other than the current one.
	versions map[versionSeries]*vm.Counter
	previous map[versionSeries]*vm.Counter
}

// otherKey is the key label of every use under a name that is not in the
// agent's registry.
const otherKey = "other"

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
		denials: make(map[string]*vm.Counter),

		versions: make(map[versionSeries]*vm.Counter),
		previous: make(map[versionSeries]*vm.Counter),
	}
}

// Observe records a key use; give it to the agent as Options.Observe.
func (m *Metrics) Observe(u agent.Use) {
	if errors.Is(u.Err, providers.ErrPermissionDenied) {
		m.denied(u.Operation)
		return
	}
	result := providers.ErrorName(u.Err)
	if result == "" {
		result = "error"
	}
	key := u.Key
	if !u.Registered {
		key = otherKey
	}
	s := opSeries{key, u.Operation, result}
	m.mu.RLock()
	ops, bytes, latency := m.ops[s], m.bytes[key], m.latency[u.Operation]
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
	if u.Version > 0 && u.Registered {
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

// denied counts a denial of op.
func (m *Metrics) denied(op string) {
	m.mu.RLock()
	c := m.denials[op]
	m.mu.RUnlock()
	if c == nil {
		m.mu.Lock()
		if c = m.denials[op]; c == nil {
			c = m.set.GetOrCreateCounter(name("hmac_agent_denials_total", "operation", op))
			m.denials[op] = c
		}
		m.mu.Unlock()
	}
	c.Inc()
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
	provs := a.Providers()
	labels := make([][]string, len(provs))
	for i, p := range provs {
		labels[i] = []string{"kind", p.Kind(), "provider", p.Name()}
	}
	// Each family's HELP and TYPE come once, before all its samples: the
	// text format allows no second block for a family.
	m.set.RegisterMetricsWriter(func(w io.Writer) {
		gauge(w, "hmac_agent_connections", "Open client connections.", sample{v: uint64(srv.Connections())})
		gauge(w, "hmac_agent_queued_bytes", "Bytes of requests read and waiting for a device.", sample{v: uint64(srv.QueuedBytes())})
		gauge(w, "hmac_agent_contexts", "Open HMAC contexts.", sample{v: uint64(a.Contexts())})
		counter(w, "hmac_agent_log_lines_left_out_total", "Denial and error log lines left out by the per-caller rate.", sample{v: a.LogLinesLeftOut()})

		up := make([]sample, len(provs))
		var stats providerStats
		for i, p := range provs {
			up[i] = sample{labels[i], 0}
			if a.Healthy(p) { // as last probed: a scrape never waits on a device
				up[i].v = 1
			}
			if r, ok := p.(providers.StatsReporter); ok {
				stats.add(labels[i], r.Stats())
			}
		}
		gauge(w, "hmac_agent_provider_up", "1 if the provider answered its last health probe.", up...)
		stats.write(w)
	})
}

// providerStats gathers the providers' own figures by family, so that each
// family is written once with the samples of every provider that has it.
type providerStats struct {
	order    []string
	families map[string]*statFamily
}

type statFamily struct {
	help    string
	counter bool
	samples []sample
}

func (s *providerStats) add(labels []string, stats []providers.Stat) {
	for _, st := range stats {
		f := s.families[st.Name]
		if f == nil {
			if s.families == nil {
				s.families = map[string]*statFamily{}
			}
			f = &statFamily{help: st.Help, counter: st.Counter}
			s.families[st.Name] = f
			s.order = append(s.order, st.Name)
		}
		f.samples = append(f.samples, sample{labels, st.Value})
	}
}

func (s *providerStats) write(w io.Writer) {
	for _, name := range s.order {
		f := s.families[name]
		typ := "gauge"
		if f.counter {
			typ = "counter"
		}
		writeFamily(w, "hmac_agent_"+name, typ, f.help, f.samples)
	}
}

// sample is one value of a family, with its labels as name, value pairs.
type sample struct {
	labels []string
	v      uint64
}

func gauge(w io.Writer, family, help string, samples ...sample) {
	writeFamily(w, family, "gauge", help, samples)
}

func counter(w io.Writer, family, help string, samples ...sample) {
	writeFamily(w, family, "counter", help, samples)
}

// writeFamily writes one family: its HELP and TYPE once, then each
// sample. A family with no samples is left out whole.
func writeFamily(w io.Writer, family, typ, help string, samples []sample) {
	if len(samples) == 0 {
		return
	}
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", family, help, family, typ)
	for _, s := range samples {
		fmt.Fprintf(w, "%s %d\n", name(family, s.labels...), s.v)
	}
}

// ContentType is the media type of the page: Prometheus' text format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// WritePage writes the page: the agent's metrics, then the Go runtime's
// and the process's own, every value read afresh. A listener that anyone
// may scrape often should keep the bytes for a while rather than call it
// for each scrape (cmd/hmac-agent builds the page at most once a second).
func (m *Metrics) WritePage(w io.Writer) {
	m.set.WritePrometheus(w)
	vm.WriteProcessMetrics(w)
}

// Handler serves the page, built afresh for each request.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		m.WritePage(w)
	})
}
