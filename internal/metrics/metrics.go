// Package metrics exports the agent's Prometheus metrics: operations by
// key, operation and result, their latency, bytes, open connections and
// contexts, PKCS#11 sessions, TPM slot swaps and provider health.
//
// A Metrics is safe for concurrent use.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// Metrics holds the agent's metrics in a registry of its own.
type Metrics struct {
	reg     *prometheus.Registry
	ops     *prometheus.CounterVec
	latency *prometheus.HistogramVec
	bytes   *prometheus.CounterVec
}

// New makes the metrics. Observe must be given to the agent as its
// observer; Watch adds the gauges read from a running agent and server.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hmac_agent_operations_total",
		Help: "Key uses and denials, by key, operation and result (ok or an error name).",
	}, []string{"key", "operation", "result"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hmac_agent_operation_duration_seconds",
		Help:    "Time of one-shot operations, and of contexts from open to end, by operation.",
		Buckets: prometheus.ExponentialBuckets(5e-6, 4, 12), // 5 µs to about 80 s
	}, []string{"operation"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hmac_agent_bytes_total",
		Help: "Message bytes MACed or verified, by key.",
	}, []string{"key"})
	m.reg.MustRegister(m.ops, m.latency, m.bytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records a key use; give it to the agent as Options.Observe.
func (m *Metrics) Observe(u agent.Use) {
	result := providers.ErrorName(u.Err)
	if result == "" {
		result = "error"
	}
	m.ops.WithLabelValues(u.Key, u.Operation, result).Inc()
	if u.Duration > 0 {
		m.latency.WithLabelValues(u.Operation).Observe(u.Duration.Seconds())
	}
	if u.Bytes > 0 {
		m.bytes.WithLabelValues(u.Key).Add(float64(u.Bytes))
	}
}

// Server is what the metrics read from the socket server.
type Server interface{ Connections() int }

// Watch registers gauges read at each scrape from the agent, the server
// and the agent's providers.
func (m *Metrics) Watch(a *agent.Agent, srv Server) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hmac_agent_connections", Help: "Open client connections."},
			func() float64 { return float64(srv.Connections()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hmac_agent_contexts", Help: "Open HMAC contexts."},
			func() float64 { return float64(a.Status(context.Background()).Contexts) }),
	)
	for _, p := range a.Providers() {
		labels := prometheus.Labels{"provider": p.Name(), "kind": p.Kind()}
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hmac_agent_provider_up", Help: "1 if the provider's device answers and is usable, else 0.", ConstLabels: labels,
		}, func() float64 {
			if a.Health(context.Background(), p) != nil {
				return 0
			}
			return 1
		}))
		if hp, ok := p.(interface{ Sessions() pkcs11.SessionStats }); ok {
			m.reg.MustRegister(
				prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hmac_agent_pkcs11_sessions_open", Help: "PKCS#11 sessions open.", ConstLabels: labels},
					func() float64 { return float64(hp.Sessions().Open) }),
				prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hmac_agent_pkcs11_sessions_in_use", Help: "PKCS#11 sessions lent to a request.", ConstLabels: labels},
					func() float64 { return float64(hp.Sessions().InUse) }),
				prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hmac_agent_pkcs11_session_waits_total", Help: "Requests that waited for a free PKCS#11 session.", ConstLabels: labels},
					func() float64 { return float64(hp.Sessions().Waits) }),
			)
		}
		if sw, ok := p.(interface{ Swaps() uint64 }); ok {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "hmac_agent_tpm_slot_swaps_total", Help: "Objects swapped out of the TPM to make room.", ConstLabels: labels,
			}, func() float64 { return float64(sw.Swaps()) }))
		}
	}
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}
