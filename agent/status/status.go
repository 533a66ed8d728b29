// Package status holds the agent's account of itself, as the STATUS
// request returns it in JSON: one definition for the agent that fills it
// and the clients that read it. It imports nothing of the agent's, so a
// client can use it.
package status

import "time"

// Provider is one provider's line.
type Provider struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Keys    int    `json:"keys"`
	Healthy bool   `json:"healthy"`
	Error   string `json:"error,omitempty"`
}

// Status is what `hmac-agent status` shows.
type Status struct {
	Version     string     `json:"version"`
	Started     time.Time  `json:"started"`
	Uptime      float64    `json:"uptime_seconds"`
	PID         int        `json:"pid"`
	Providers   []Provider `json:"providers"`
	Keys        int        `json:"keys"`
	Connections int64      `json:"connections"`
	Contexts    int64      `json:"contexts"`
}
