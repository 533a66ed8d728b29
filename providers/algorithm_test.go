package providers_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestWireCodes pins the codes of the algorithms clients in other
// languages already send; they never change.
func TestWireCodes(t *testing.T) {
	want := "1:sha1 2:sha224 3:sha256 4:sha384 5:sha512 6:sha512_224 7:sha512_256 8:sha3_224 " +
		"9:sha3_256 10:sha3_384 11:sha3_512 12:md5 13:blake2b 14:blake2s 15:sm3"
	var got []string
	for _, alg := range providers.Algorithms() {
		got = append(got, strconv.Itoa(int(alg))+":"+alg.String())
	}
	if g := strings.Join(got, " "); !strings.HasPrefix(g, want) {
		t.Errorf("algorithms are %s, want %s first", g, want)
	}
}

// TestTable checks the name round trip (providers/hashes checks each
// row against its hash).
func TestTable(t *testing.T) {
	for _, alg := range providers.Algorithms() {
		if a, err := providers.ParseAlgorithm(alg.String()); a != alg || err != nil {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", alg, a, err)
		}
	}
	for _, bad := range []providers.Algorithm{0, providers.MaxAlgorithm + 1, 255} {
		if bad.Valid() || bad.Size() != 0 {
			t.Errorf("%d is valid", bad)
		}
	}
}

// goConsts returns the constants of a Go file as name -> expression text.
func goConsts(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			for i, n := range v.Names {
				switch e := v.Values[i].(type) {
				case *ast.BasicLit:
					out[n.Name] = e.Value
				case *ast.SelectorExpr:
					out[n.Name] = e.X.(*ast.Ident).Name + "." + e.Sel.Name
				}
			}
		}
	}
	return out
}

// TestGoConstants checks that every algorithm has a constant named after
// it in providers and the same constant in the Go client.
func TestGoConstants(t *testing.T) {
	own := goConsts(t, "algorithm.go")
	clientConsts := goConsts(t, "../client/algorithm.go")
	for _, alg := range providers.Algorithms() {
		var ident string
		for name, value := range own {
			if strings.ToLower(name) == alg.String() && value == strconv.Itoa(int(alg)) {
				ident = name
			}
		}
		if ident == "" {
			t.Errorf("%s: no constant %s = %d in providers", alg, strings.ToUpper(alg.String()), alg)
			continue
		}
		if clientConsts[ident] != "providers."+ident {
			t.Errorf("%s: client/algorithm.go has no constant %s = providers.%s", alg, ident, ident)
		}
		delete(clientConsts, ident)
	}
	for name, value := range clientConsts {
		if strings.HasPrefix(value, "providers.") {
			t.Errorf("client/algorithm.go: %s = %s is not an algorithm of the table", name, value)
		}
	}
}

// pythonDict returns the "name": value entries of a top-level dict
// literal in a Python file.
func pythonDict(t *testing.T, path, dict string) map[string]string {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(src), "\n"+dict+" = {\n")
	if !ok {
		t.Fatalf("%s has no %s dict", path, dict)
	}
	body, _, _ = strings.Cut(body, "\n}")
	out := map[string]string{}
	entry := regexp.MustCompile(`^\s*"([^"]+)": ("?[^",]+"?),$`)
	for _, line := range strings.Split(body, "\n") {
		m := entry.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("%s: %s: cannot read %q", path, dict, line)
		}
		out[m[1]] = strings.Trim(m[2], `"`)
	}
	return out
}

// TestPythonTables checks the Python client's algorithm codes, digest
// sizes and pyca/cryptography names against the table.
func TestPythonTables(t *testing.T) {
	const dir = "../clients/python/hmac_agent/"
	codes := pythonDict(t, dir+"_wire.py", "ALGORITHMS")
	sizes := pythonDict(t, dir+"_wire.py", "DIGEST_SIZES")
	pyca := pythonDict(t, dir+"_hmac.py", "_NAMES")
	named := map[string]bool{}
	for _, agentName := range pyca {
		named[agentName] = true
		if _, err := providers.ParseAlgorithm(agentName); err != nil {
			t.Errorf("_hmac.py: _NAMES maps to %q, which the agent does not know", agentName)
		}
	}
	for _, alg := range providers.Algorithms() {
		name := alg.String()
		if codes[name] != strconv.Itoa(int(alg)) {
			t.Errorf("_wire.py: ALGORITHMS[%q] = %q, want %d", name, codes[name], alg)
		}
		if sizes[name] != strconv.Itoa(alg.Size()) {
			t.Errorf("_wire.py: DIGEST_SIZES[%q] = %q, want %d", name, sizes[name], alg.Size())
		}
		if !named[name] {
			t.Errorf("_hmac.py: no pyca/cryptography name for %s", name)
		}
		delete(codes, name)
		delete(sizes, name)
	}
	for name := range codes {
		t.Errorf("_wire.py: ALGORITHMS has %q, which the agent does not know", name)
	}
	for name := range sizes {
		t.Errorf("_wire.py: DIGEST_SIZES has %q, which the agent does not know", name)
	}
}
