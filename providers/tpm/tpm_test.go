package tpm_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

func reference(alg providers.Algorithm, key, msg []byte) []byte {
	h := hmac.New(hashes.New(alg), key)
	h.Write(msg)
	return h.Sum(nil)
}

func open(t testing.TB, sw *swtpm.TPM, state string) *tpm.Provider {
	t.Helper()
	p, err := tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func newTPM(t testing.TB) (*tpm.Provider, *swtpm.TPM, string) {
	t.Helper()
	sw := swtpm.Require(t)
	state := filepath.Join(t.TempDir(), "state")
	return open(t, sw, state), sw, state
}

func TestSmoke(t *testing.T) {
	p, _, _ := newTPM(t)
	ctx := context.Background()
	t.Log("algorithms", p.Algorithms())
	secret := []byte("Jefe")
	if _, err := p.ImportKey(ctx, "jefe", secret); err != nil {
		t.Fatal(err)
	}
	k, err := p.Key(ctx, "jefe")
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range p.Algorithms() {
		m, err := k.NewMAC(ctx, alg)
		if err != nil {
			t.Fatal(err)
		}
		msg := bytes.Repeat([]byte("what do ya want for nothing?"), 100)
		m.Update(ctx, msg)
		tag, err := m.Finalize(ctx)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if !bytes.Equal(tag, reference(alg, secret, msg)) {
			t.Errorf("%s: %x", alg, tag)
		}
	}
}

func TestConformance(t *testing.T) {
	p, _, _ := newTPM(t)
	providertest.Run(t, providertest.ProviderSubject(p, p.Algorithms()))
}

func TestConformanceThroughAgent(t *testing.T) {
	p, _, _ := newTPM(t)
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	providertest.Run(t, providertest.ClientSubject(c, "tpm", p.Algorithms()))
}

// TestLongKeys: keys longer than the block size are stored as their hash,
// and give the tags crypto/hmac gives with the long key.
func TestLongKeys(t *testing.T) {
	p, _, _ := newTPM(t)
	ctx := context.Background()
	for _, n := range []int{0, 1, 64, 65, 128, 129, 300} {
		secret := bytes.Repeat([]byte{byte(n)}, n)
		name := fmt.Sprintf("len%d", n)
		if _, err := p.ImportKey(ctx, name, secret); err != nil {
			t.Fatal(err)
		}
		k, _ := p.Key(ctx, name)
		for _, alg := range p.Algorithms() {
			tag, err := k.(providers.OneShot).SumMAC(ctx, alg, []byte("msg"), nil)
			if err != nil || !bytes.Equal(tag, reference(alg, secret, []byte("msg"))) {
				t.Errorf("%d-byte key, %s: %x %v", n, alg, tag, err)
			}
		}
	}
}

func TestGenerateListDelete(t *testing.T) {
	p, _, state := newTPM(t)
	ctx := context.Background()
	info, err := p.GenerateKey(ctx, "gen", 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(info.Algorithms) != fmt.Sprint(p.Algorithms()) {
		t.Errorf("generated for %v", info.Algorithms)
	}
	if _, err := p.GenerateKey(ctx, "gen", 0); !errors.Is(err, providers.ErrKeyExists) {
		t.Errorf("second generate: %v", err)
	}
	if _, err := p.GenerateKey(ctx, "sized", 32); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("generate with a length: %v", err)
	}
	k, _ := p.Key(ctx, "gen")
	m, _ := k.NewMAC(ctx, providers.SHA256)
	m.Update(ctx, make([]byte, 5000))
	tag, err := m.Finalize(ctx)
	if err != nil || len(tag) != 32 {
		t.Fatalf("MAC with a generated key: %x %v", tag, err)
	}
	again, _ := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, make([]byte, 5000), nil)
	if !bytes.Equal(tag, again) {
		t.Error("the generated key gives different tags for the same message")
	}
	// Blobs are private files.
	for _, f := range []string{"keys", "keys/gen", "keys/gen/sha256.json"} {
		fi, err := os.Stat(filepath.Join(state, f))
		if err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	list, _ := p.Keys(ctx)
	if len(list) != 1 || list[0].Name != "gen" {
		t.Errorf("list %+v", list)
	}
	if err := p.DeleteKey(ctx, "gen"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Key(ctx, "gen"); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "keys", "gen")); !os.IsNotExist(err) {
		t.Errorf("blobs left after delete: %v", err)
	}
}

// TestManyContexts: 200 contexts, each with a sequence in the TPM and a
// copy, on a TPM with three slots.
func TestManyContexts(t *testing.T) {
	p, _, _ := newTPM(t)
	ctx := context.Background()
	secret := []byte("many-contexts")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	const n = 200
	type pair struct {
		m, c providers.MAC
		msg  []byte
	}
	var pairs []pair
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			alg := p.Algorithms()[i%len(p.Algorithms())]
			m, err := k.NewMAC(ctx, alg)
			if err != nil {
				errs <- err
				return
			}
			msg := bytes.Repeat([]byte{byte(i)}, 1500+i)
			if err := m.Update(ctx, msg); err != nil {
				errs <- err
				return
			}
			c, err := m.Copy(ctx)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			pairs = append(pairs, pair{m, c, msg})
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, pr := range pairs {
		pr.c.Update(ctx, []byte("copy"))
		wg.Go(func() {
			alg := pr.m.Algorithm()
			if tag, err := pr.m.Finalize(ctx); err != nil || !bytes.Equal(tag, reference(alg, secret, pr.msg)) {
				errs <- fmt.Errorf("original %s: %v", alg, err)
			}
			if tag, err := pr.c.Finalize(ctx); err != nil || !bytes.Equal(tag, reference(alg, secret, append(append([]byte(nil), pr.msg...), "copy"...))) {
				errs <- fmt.Errorf("copy %s: %v", alg, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d contexts and %d copies; %d slot swaps", len(pairs), len(pairs), p.Swaps())
}

func TestRestart(t *testing.T) {
	p, sw, state := newTPM(t)
	ctx := context.Background()
	secret := []byte("restart")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	// A sequence whose input is past what a context keeps to replay.
	cut, _ := k.NewMAC(ctx, providers.SHA256)
	if err := cut.Update(ctx, make([]byte, tpm.MaxReplay+3000)); err != nil {
		t.Fatal(err)
	}
	short, _ := k.NewMAC(ctx, providers.SHA256)
	short.Update(ctx, []byte("held back, not yet in the TPM"))
	if err := sw.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := cut.Finalize(ctx); !errors.Is(err, providers.ErrContextLost) {
		t.Errorf("a sequence across a restart: %v, want ErrContextLost", err)
	}
	if tag, err := short.Finalize(ctx); err != nil || !bytes.Equal(tag, reference(providers.SHA256, secret, []byte("held back, not yet in the TPM"))) {
		t.Errorf("a context with nothing in the TPM: %x %v", tag, err)
	}
	for _, alg := range p.Algorithms() {
		tag, err := k.(providers.OneShot).SumMAC(ctx, alg, []byte("after"), nil)
		if err != nil || !bytes.Equal(tag, reference(alg, secret, []byte("after"))) {
			t.Errorf("%s after the restart: %x %v", alg, tag, err)
		}
	}
	// A new provider on the same state and TPM finds the keys again.
	p.Close()
	k2, err := open(t, sw, state).Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if tag, err := k2.(providers.OneShot).SumMAC(ctx, providers.SHA512, nil, nil); err != nil || !bytes.Equal(tag, reference(providers.SHA512, secret, nil)) {
		t.Errorf("reopened: %x %v", tag, err)
	}
}

// TestClearedTPM: blobs made by one TPM cannot load in another (or in the
// same one after TPM2_Clear); the error says so and names the key.
func TestClearedTPM(t *testing.T) {
	p, _, state := newTPM(t)
	ctx := context.Background()
	p.ImportKey(ctx, "orphan", []byte("orphan"))
	p.Close()
	other := swtpm.Require(t) // a TPM with another storage seed
	p2 := open(t, other, state)
	k, err := p2.Key(ctx, "orphan")
	if err != nil {
		t.Fatal(err)
	}
	_, err = k.(providers.OneShot).SumMAC(ctx, providers.SHA256, nil, nil)
	if !errors.Is(err, tpm.ErrTPMCleared) || !strings.Contains(err.Error(), `"orphan"`) {
		t.Errorf("blob from another TPM: %v", err)
	}
}

// TestRestartUnderAgent: swtpm restarts under a running agent; the
// software key beside it never stops working, and the TPM key works again
// at once.
func TestRestartUnderAgent(t *testing.T) {
	p, sw, _ := newTPM(t)
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	a.Soft.ImportKey(ctx, "soft-key", []byte("soft"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ImportKey(ctx, "tpm", "tpm-key", []byte("tpm")); err != nil {
		t.Fatal(err)
	}
	h, _ := c.New(ctx, "tpm-key", client.SHA256)
	// More input than a context keeps to replay.
	h.Update(make([]byte, tpm.MaxReplay+5000))
	if _, err := h.Copy(ctx); err != nil { // the sequence is in the TPM now
		t.Fatal(err)
	}
	stop := make(chan struct{})
	softErrs := make(chan error, 1)
	go func() { // the software key is used all through the restart
		for {
			select {
			case <-stop:
				close(softErrs)
				return
			default:
			}
			if _, err := c.MAC(ctx, "soft-key", client.SHA256, []byte("x")); err != nil {
				softErrs <- err
				close(softErrs)
				return
			}
		}
	}()
	if err := sw.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Finalize(ctx); !errors.Is(err, client.ErrContextLost) {
		t.Errorf("a sequence cut by the restart: %v, want ErrContextLost", err)
	}
	tag, err := c.MAC(ctx, "tpm-key", client.SHA256, []byte("after"))
	if err != nil || !bytes.Equal(tag, reference(providers.SHA256, []byte("tpm"), []byte("after"))) {
		t.Errorf("the TPM key after the restart: %x %v", tag, err)
	}
	close(stop)
	for err := range softErrs {
		t.Errorf("the software key during the restart: %v", err)
	}
}

func TestSwapMetrics(t *testing.T) {
	p, _, _ := newTPM(t)
	m := metrics.New()
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	m.Watch(a.Agent, a.Server)
	ctx := context.Background()
	p.ImportKey(ctx, "k", []byte("k"))
	k, _ := p.Key(ctx, "k")
	for _, alg := range p.Algorithms() { // more keys than slots: swaps
		k.(providers.OneShot).SumMAC(ctx, alg, nil, nil)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `hmac_agent_tpm_slot_swaps_total{kind="tpm",provider="tpm"}`) ||
		!strings.Contains(rec.Body.String(), `hmac_agent_provider_up{kind="tpm",provider="tpm"} 1`) {
		t.Errorf("TPM metrics missing:\n%s", rec.Body.String())
	}
	if p.Swaps() == 0 {
		t.Error("four keys on three slots made no swaps")
	}
}

// TestAlgorithmsFromTPM asks the TPM itself which hashes it implements
// (TPM2_GetCapability for algorithms and for PCR banks) and checks the
// provider offers exactly those the agent knows, SM3 included where the
// TPM has SM3_256.
func TestAlgorithmsFromTPM(t *testing.T) {
	p, sw, _ := newTPM(t)
	offered := fmt.Sprint(p.Algorithms())
	p.Close() // swtpm serves one connection at a time

	tp, err := linuxudstpm.Open(sw.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapAlgs, PropertyCount: 256}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	algs, err := rsp.CapabilityData.Data.Algorithms()
	if err != nil {
		t.Fatal(err)
	}
	// The TCG registry's IDs, written out here rather than taken from the
	// provider, so the test is a second reading of the registry.
	tcgHashes := map[tpm2.TPMAlgID]providers.Algorithm{
		0x0004: providers.SHA1, 0x000B: providers.SHA256, 0x000C: providers.SHA384, 0x000D: providers.SHA512,
		0x0012: providers.SM3, 0x0027: providers.SHA3_256, 0x0028: providers.SHA3_384, 0x0029: providers.SHA3_512,
	}
	have := map[providers.Algorithm]bool{}
	var reported []string
	for _, a := range algs.AlgProperties {
		if a.AlgProperties.Hash {
			reported = append(reported, fmt.Sprintf("0x%04x", uint16(a.Alg)))
		}
		if alg, ok := tcgHashes[a.Alg]; ok {
			have[alg] = true
		}
	}
	var want []providers.Algorithm
	for _, alg := range providers.Algorithms() {
		if have[alg] {
			want = append(want, alg)
		}
	}
	if offered != fmt.Sprint(want) {
		t.Errorf("provider offers %s, the TPM has %v", offered, want)
	}

	rsp, err = tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		t.Fatal(err)
	}
	var banks []string
	for _, b := range pcrs.PCRSelections {
		banks = append(banks, fmt.Sprintf("0x%04x", uint16(b.Hash)))
	}
	t.Logf("TPM hash algorithms %v, PCR banks %v; offered %s", reported, banks, offered)
}
