// Package status holds the agent's account of itself, as the STATUS
// request returns it in JSON: one definition for the agent that fills it
// and the clients that read it. It imports nothing of the agent's, so a
// client can use it.
package status

import "time"

// Provider is one provider's line.
//
// Health comes from probes the agent runs in the background (and from
// the requests it serves), so that asking never waits on a device:
// Checked and CheckAge say when the last probe finished. A provider is
// unhealthy from DownSince while its probe or its requests fail, or its
// probe has not answered within Timeout.
type Provider struct {
	Name           string    `json:"name"`
	Kind           string    `json:"kind"`
	Keys           int       `json:"keys"` // at the last probe
	Healthy        bool      `json:"healthy"`
	Error          string    `json:"error,omitempty"`
	Timeout        float64   `json:"timeout_seconds"`
	Checked        time.Time `json:"checked,omitzero"`
	CheckAge       float64   `json:"check_age_seconds"`
	DownSince      time.Time `json:"down_since,omitzero"`
	FailedRequests int64     `json:"failed_requests,omitempty"` // since DownSince
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
	// Peers lists open connections with their callers' identity: all of
	// them for the agent's owner and root, the asker's own uid's for
	// anyone else.
	Peers []Peer `json:"peers,omitempty"`
}

// Peer is one open connection's caller, as read at connect time. Unit,
// Cgroup, Container and Executable are empty when unknown or not read.
type Peer struct {
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
	PID        int32  `json:"pid"`
	Unit       string `json:"unit,omitempty"`
	Cgroup     string `json:"cgroup,omitempty"`
	Container  string `json:"container,omitempty"`
	Executable string `json:"exe,omitempty"`
	// ExecutableSHA256 is hex, present when a policy names a digest.
	ExecutableSHA256 string `json:"exe_sha256,omitempty"`
	Contexts         int    `json:"contexts"`
}
