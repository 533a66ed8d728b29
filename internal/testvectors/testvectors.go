// Package testvectors loads the Wycheproof and RFC 2202/4231 HMAC vectors
// from the shared vectors directory beside the repository. The vectors are
// read where they are, never copied into the project. The one exception is
// RFC 2202's HMAC-MD5 cases, which the shared directory lacks: they are
// transcribed from the RFC into this package's testdata.
//
// The directory is $HMAC_AGENT_VECTORS if set, else ../shared/vectors
// relative to the repository root (the directory holding go.mod).
//
// BLAKE2b and BLAKE2s HMAC have no published vectors; the conformance suite
// checks them against an independent implementation instead.
package testvectors

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Vector is one test case.
type Vector struct {
	Source string // file and case, for failure messages
	Alg    providers.Algorithm
	Key    []byte
	Msg    []byte
	// Tag is the expected tag; it may be shorter than the digest
	// (Wycheproof truncated-tag groups), in which case it is the leftmost
	// bytes of the full tag.
	Tag []byte
	// Valid is false for cases whose tag must be rejected.
	Valid bool
}

// Truncated reports whether the expected tag is shorter than a full tag.
func (v Vector) Truncated() bool { return len(v.Tag) != v.Alg.Size() }

// Dir returns the vectors directory, or an error saying where it looked.
func Dir() (string, error) {
	if d := os.Getenv("HMAC_AGENT_VECTORS"); d != "" {
		return d, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("%w; set HMAC_AGENT_VECTORS", err)
	}
	v := filepath.Join(root, "..", "shared", "vectors")
	if _, err := os.Stat(v); err != nil {
		return "", fmt.Errorf("testvectors: %s not found; set HMAC_AGENT_VECTORS", v)
	}
	return v, nil
}

// repoRoot is the nearest directory above the working directory holding
// go.mod.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", errors.New("testvectors: no go.mod above the working directory")
		}
	}
}

var wycheproofFiles = map[providers.Algorithm]string{
	providers.SHA1:       "hmac_sha1_test.json",
	providers.SHA224:     "hmac_sha224_test.json",
	providers.SHA256:     "hmac_sha256_test.json",
	providers.SHA384:     "hmac_sha384_test.json",
	providers.SHA512:     "hmac_sha512_test.json",
	providers.SHA512_224: "hmac_sha512_224_test.json",
	providers.SHA512_256: "hmac_sha512_256_test.json",
	providers.SHA3_224:   "hmac_sha3_224_test.json",
	providers.SHA3_256:   "hmac_sha3_256_test.json",
	providers.SHA3_384:   "hmac_sha3_384_test.json",
	providers.SHA3_512:   "hmac_sha3_512_test.json",
	providers.SM3:        "hmac_sm3_test.json",
}

var rfcFiles = map[providers.Algorithm]string{
	providers.SHA1:   "rfc-2202-sha1.txt",
	providers.SHA224: "rfc-4231-sha224.txt",
	providers.SHA256: "rfc-4231-sha256.txt",
	providers.SHA384: "rfc-4231-sha384.txt",
	providers.SHA512: "rfc-4231-sha512.txt",
}

// localRFCFiles are in this package's testdata, not the shared directory.
var localRFCFiles = map[providers.Algorithm]string{
	providers.MD5: "rfc-2202-md5.txt",
}

type hexBytes []byte

func (h *hexBytes) UnmarshalText(b []byte) error {
	v, err := hex.DecodeString(string(b))
	*h = v
	return err
}

// Wycheproof returns every case of the Wycheproof file for alg, or none
// for an algorithm Wycheproof does not cover (MD5, BLAKE2b, BLAKE2s).
func Wycheproof(alg providers.Algorithm) ([]Vector, error) {
	name, ok := wycheproofFiles[alg]
	if !ok {
		return nil, nil
	}
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "wycheproof", name))
	if err != nil {
		return nil, err
	}
	var file struct {
		NumberOfTests int
		TestGroups    []struct {
			TagSize int
			Tests   []struct {
				TcID   int
				Key    hexBytes
				Msg    hexBytes
				Tag    hexBytes
				Result string
			}
		}
	}
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("testvectors: %s: %w", name, err)
	}
	var out []Vector
	for _, g := range file.TestGroups {
		for _, t := range g.Tests {
			if len(t.Tag)*8 != g.TagSize {
				return nil, fmt.Errorf("testvectors: %s tcId %d: tag length disagrees with tagSize", name, t.TcID)
			}
			out = append(out, Vector{
				Source: fmt.Sprintf("%s#%d", name, t.TcID),
				Alg:    alg, Key: t.Key, Msg: t.Msg, Tag: t.Tag,
				Valid: t.Result == "valid",
			})
		}
	}
	if len(out) != file.NumberOfTests {
		return nil, fmt.Errorf("testvectors: %s: read %d cases, file says %d", name, len(out), file.NumberOfTests)
	}
	return out, nil
}

// RFC returns the RFC 2202 (MD5, SHA-1) or RFC 4231 (SHA-2) cases for
// alg, or none for an algorithm those RFCs do not cover.
func RFC(alg providers.Algorithm) ([]Vector, error) {
	var path string
	if name, ok := rfcFiles[alg]; ok {
		dir, err := Dir()
		if err != nil {
			return nil, err
		}
		path = filepath.Join(dir, "rfc", name)
	} else if name, ok := localRFCFiles[alg]; ok {
		root, err := repoRoot()
		if err != nil {
			return nil, err
		}
		path = filepath.Join(root, "internal", "testvectors", "testdata", name)
	} else {
		return nil, nil
	}
	name := filepath.Base(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out    []Vector
		cur    Vector
		n      int
		msgLen int
	)
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' || text[0] == '[' {
			continue
		}
		field, value, ok := strings.Cut(text, " = ")
		if !ok {
			return nil, fmt.Errorf("testvectors: %s:%d: cannot parse %q", name, line, text)
		}
		switch field {
		case "Len":
			var bits int
			if _, err := fmt.Sscan(value, &bits); err != nil || bits%8 != 0 {
				return nil, fmt.Errorf("testvectors: %s:%d: bad Len %q", name, line, value)
			}
			cur = Vector{Alg: alg, Valid: true, Msg: []byte{}}
			msgLen = bits / 8
		case "Key", "Msg", "MD":
			b, err := hex.DecodeString(value)
			if err != nil {
				return nil, fmt.Errorf("testvectors: %s:%d: %w", name, line, err)
			}
			switch field {
			case "Key":
				cur.Key = b
			case "Msg":
				if len(b) < msgLen {
					return nil, fmt.Errorf("testvectors: %s:%d: Msg shorter than Len", name, line)
				}
				cur.Msg = b[:msgLen] // Len = 0 comes with a placeholder byte
			case "MD":
				n++
				cur.Tag = b
				cur.Source = fmt.Sprintf("%s#%d", name, n)
				out = append(out, cur)
			}
		}
	}
	return out, sc.Err()
}
