package providers_test

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestErrorTable checks the table's own rules: codes run from 1 without a
// gap (KindByCode relies on it), and no sentinel or name appears twice.
func TestErrorTable(t *testing.T) {
	sentinels := map[error]bool{}
	names := map[string]bool{}
	for i, k := range providers.ErrorKinds() {
		if int(k.Code) != i+1 {
			t.Errorf("row %d has code %d", i, k.Code)
		}
		if k.Err == nil || sentinels[k.Err] || k.Name == "" || names[k.Name] {
			t.Errorf("code %d: sentinel %v or name %q is missing or repeated", k.Code, k.Err, k.Name)
		}
		sentinels[k.Err], names[k.Name] = true, true
		if got, ok := providers.KindByCode(k.Code); !ok || got != k {
			t.Errorf("KindByCode(%d) = %v, %v", k.Code, got, ok)
		}
		wrapped := fmt.Errorf("layer: %w", providers.Publicf(k.Err, "public"))
		if got := providers.ErrorName(wrapped); got != k.Name {
			t.Errorf("ErrorName(wrapped %v) = %q, want %q", k.Err, got, k.Name)
		}
	}
	for _, code := range []uint16{0, uint16(len(providers.ErrorKinds()) + 1), 65535} {
		if k, ok := providers.KindByCode(code); ok {
			t.Errorf("KindByCode(%d) = %v", code, k)
		}
	}
	if got := providers.ErrorName(nil); got != "ok" {
		t.Errorf("ErrorName(nil) = %q", got)
	}
	if got := providers.ErrorName(errors.New("device fault")); got != "" {
		t.Errorf("ErrorName(unknown) = %q", got)
	}
}

// tableByName is the error table as name -> code text.
func tableByName() map[string]string {
	out := map[string]string{}
	for _, k := range providers.ErrorKinds() {
		out[k.Name] = strconv.Itoa(int(k.Code))
	}
	return out
}

// sameTable reports where got (name -> code) differs from the table.
func sameTable(t *testing.T, where string, got map[string]string) {
	t.Helper()
	want := tableByName()
	for name, code := range want {
		if got[name] != code {
			t.Errorf("%s: %q has code %q, want %s", where, name, got[name], code)
		}
	}
	for name, code := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: %q (code %s) is not in the agent's table", where, name, code)
		}
	}
}

// TestErrorTableDocs checks docs/protocol.md's table of error codes.
func TestErrorTableDocs(t *testing.T) {
	src, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(src), "\n| code | name | meaning |\n| --- | --- | --- |\n")
	if !ok {
		t.Fatal("docs/protocol.md has no table of error codes")
	}
	body, _, _ = strings.Cut(body, "\n\n")
	row := regexp.MustCompile(`^\| (\d+) \| ([a-z_]+) \| .+ \|$`)
	got := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("docs/protocol.md: cannot read %q", line)
		}
		got[m[2]] = m[1]
	}
	sameTable(t, "docs/protocol.md", got)
}

// TestErrorTableNode checks the Node client's ERROR_CODES.
func TestErrorTableNode(t *testing.T) {
	src, err := os.ReadFile("../clients/node/lib/wire.js")
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(src), "\nconst ERROR_CODES = Object.freeze({\n")
	if !ok {
		t.Fatal("wire.js has no ERROR_CODES")
	}
	body, _, _ = strings.Cut(body, "\n});")
	entry := regexp.MustCompile(`^\s*(\d+): '([a-z_]+)',$`)
	got := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		m := entry.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("wire.js: ERROR_CODES: cannot read %q", line)
		}
		got[m[2]] = m[1]
	}
	sameTable(t, "clients/node/lib/wire.js", got)
}

// TestErrorTablePython checks the Python client's ERROR_CODES, and that
// each exception it raises for a code is named after that code.
func TestErrorTablePython(t *testing.T) {
	const dir = "../clients/python/hmac_agent/"
	sameTable(t, "_wire.py ERROR_CODES", pythonDict(t, dir+"_wire.py", "ERROR_CODES"))
	want := tableByName()
	for name, class := range pythonDict(t, dir+"errors.py", "_BY_NAME") {
		if _, ok := want[name]; !ok {
			t.Errorf("errors.py: _BY_NAME has %q, which is not in the agent's table", name)
		}
		if camel := camelCase(name); class != camel {
			t.Errorf("errors.py: _BY_NAME[%q] = %s, want %s", name, class, camel)
		}
	}
}

func camelCase(name string) string {
	var b strings.Builder
	for _, word := range strings.Split(name, "_") {
		b.WriteString(strings.ToUpper(word[:1]) + word[1:])
	}
	return b.String()
}
