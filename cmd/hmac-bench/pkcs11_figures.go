package main

import (
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/benchenv"
)

// pkcs11Figure is a PKCS#11 figure through the agent beside its baseline
// on the same token, measured the same way by a full run and -compare.
type pkcs11Figure struct {
	label         string // as -compare prints it
	agent, direct string // the figures' names in a full run
	unit          string
	measureDirect func() (float64, error)
	measureAgent  func(c *client.Client) (float64, error)
}

// pkcs11Figures are the one-shot MAC and VerifyMAC of one client, for
// dur each, and a stream of size bytes.
func pkcs11Figures(hsm *pkcs11Direct, dur time.Duration, size int) (mac, verify, stream pkcs11Figure) {
	mac = pkcs11Figure{"PKCS#11 one-shot MAC, 1 client", "pkcs11_oneshot_ops", "pkcs11_direct_oneshot_ops", "ops/s",
		func() (float64, error) { return hsm.oneShot(dur) },
		func(c *client.Client) (float64, error) {
			v, _, _, err := clientPingPong(c, benchenv.PKCS11Key, dur)
			return v, err
		}}
	verify = pkcs11Figure{"PKCS#11 VerifyMAC, 1 client", "pkcs11_verify_ops", "pkcs11_direct_verify_ops", "ops/s",
		func() (float64, error) { return hsm.verifyOneShot(dur) },
		func(c *client.Client) (float64, error) { return clientVerifyPingPong(c, benchenv.PKCS11Key, dur) }}
	stream = pkcs11Figure{"PKCS#11 streaming", "pkcs11_stream_mbps", "pkcs11_direct_stream_mbps", "MB/s",
		func() (float64, error) { return hsm.stream(size) },
		func(c *client.Client) (float64, error) { return clientStream(c, benchenv.PKCS11Key, size) }}
	return mac, verify, stream
}

// record measures the baseline, then the agent through c, into r.
func (f pkcs11Figure) record(r *results, c *client.Client) error {
	v, err := f.measureDirect()
	if err != nil {
		return err
	}
	r.add(f.direct, f.unit, v)
	if v, err = f.measureAgent(c); err != nil {
		return err
	}
	r.add(f.agent, f.unit, v)
	return nil
}
