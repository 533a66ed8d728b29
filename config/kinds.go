package config

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/software"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// kinds is the registry of provider kinds by the type a [[provider]]
// table names. A new kind is its own package and one line here.
var kinds = map[string]providers.Kind{
	"software": software.Kind,
	"pkcs11":   pkcs11.Kind,
	"tpm":      tpm.Kind,
}

// commonFields are the fields of a [[provider]] table every kind has.
type commonFields struct {
	Name    string   `toml:"name"`
	Type    string   `toml:"type"`
	Timeout Duration `toml:"timeout"`
}

// decodeProvider decodes one [[provider]] table: its common fields, then
// the rest into its kind's settings. A field is unknown for the kind of
// its own table, even where another table of another kind has it (the
// decoder's own account of undecoded keys is for the whole file).
func decodeProvider(meta toml.MetaData, table toml.Primitive) Provider {
	// Decoding the whole table also marks its keys decoded for the file's
	// check of unknown fields, which would otherwise name them without the
	// table's index, or beside an unknown type.
	var fields map[string]any
	if err := meta.PrimitiveDecode(table, &fields); err != nil {
		return Provider{decodeErr: err}
	}
	var common commonFields
	if err := meta.PrimitiveDecode(table, &common); err != nil {
		return Provider{decodeErr: err}
	}
	p := Provider{Name: common.Name, Type: common.Type, Timeout: common.Timeout}
	kind, ok := kinds[common.Type]
	if !ok {
		return p
	}
	p.Settings = kind.NewSettings()
	if err := meta.PrimitiveDecode(table, p.Settings); err != nil {
		p.decodeErr = err
		return p
	}
	known := tomlFields(commonFields{})
	maps.Copy(known, tomlFields(p.Settings))
	for _, field := range slices.Sorted(maps.Keys(fields)) {
		if !known[field] {
			p.unknown = append(p.unknown, field)
		}
	}
	return p
}

// tomlFields returns the TOML names of a struct's exported fields (v may
// point to the struct).
func tomlFields(v any) map[string]bool {
	t := reflect.Indirect(reflect.ValueOf(v)).Type()
	names := map[string]bool{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" {
			name = f.Name
		}
		if name != "-" && f.IsExported() {
			names[name] = true
		}
	}
	return names
}

// kindNames lists the registry's types for a message: "pkcs11, software
// or tpm".
func kindNames(conjunction string) string {
	return list(kindTypes(func(providers.Kind) bool { return true }), conjunction)
}

// timeoutKinds lists the types that take a timeout: "pkcs11 and tpm".
func timeoutKinds() string {
	return list(kindTypes(func(k providers.Kind) bool { return k.Timeout }), "and")
}

func kindTypes(keep func(providers.Kind) bool) []string {
	var out []string
	for name, k := range kinds {
		if keep(k) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func list(names []string, conjunction string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " " + conjunction + " " + names[len(names)-1]
}

// Open opens the provider the table describes, with log for what its
// operator should know at start.
func (p Provider) Open(ctx context.Context, log *slog.Logger) (providers.Provider, error) {
	if p.Settings == nil {
		return nil, fmt.Errorf("provider type %q is not available in this build", p.Type)
	}
	return p.Settings.Open(ctx, providers.Common{Name: p.Name, Timeout: p.Timeout.Duration, Log: log})
}
