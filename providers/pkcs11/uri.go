package pkcs11

import (
	"fmt"
	"net/url"
	"strings"
)

// URI is the part of an RFC 7512 PKCS#11 URI that names a key.
type URI struct {
	Token  string // token label
	Serial string
	Object string // CKA_LABEL
	ID     []byte // CKA_ID
}

// ParseURI parses "pkcs11:token=agent;object=webhook;id=%01%02". Only
// token, serial, object, id, type (which must be secret-key),
// manufacturer, model and library attributes are accepted. Query
// attributes are refused: pin-value and pin-source would put a secret, or
// the way to one, in a key name, and PINs come from the provider's
// configuration.
func ParseURI(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("%q is not a pkcs11: URI", s)
	}
	if strings.ContainsAny(rest, "?#") {
		return u, fmt.Errorf("%q: query attributes (pin-value, pin-source, module-path, ...) are not accepted in key URIs", s)
	}
	seen := map[string]bool{}
	for _, attr := range strings.Split(rest, ";") {
		if attr == "" {
			continue
		}
		name, value, ok := strings.Cut(attr, "=")
		if !ok {
			return u, fmt.Errorf("%q: attribute %q has no value", s, attr)
		}
		if seen[name] {
			return u, fmt.Errorf("%q: attribute %q given twice", s, name)
		}
		seen[name] = true
		v, err := url.PathUnescape(value)
		if err != nil {
			return u, fmt.Errorf("%q: attribute %q: %v", s, name, err)
		}
		switch name {
		case "token":
			u.Token = v
		case "serial":
			u.Serial = v
		case "object":
			u.Object = v
		case "id":
			u.ID = []byte(v)
		case "type":
			if v != "secret-key" {
				return u, fmt.Errorf("%q: type=%s: an HMAC key is a secret-key", s, v)
			}
		case "manufacturer", "model", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
		default:
			return u, fmt.Errorf("%q: unknown attribute %q", s, name)
		}
	}
	if u.Object == "" && len(u.ID) == 0 {
		return u, fmt.Errorf("%q names no key: give object= or id=", s)
	}
	return u, nil
}

// String formats the URI, percent-encoding as RFC 7512 asks.
func (u URI) String() string {
	var parts []string
	if u.Token != "" {
		parts = append(parts, "token="+url.PathEscape(u.Token))
	}
	if u.Serial != "" {
		parts = append(parts, "serial="+url.PathEscape(u.Serial))
	}
	if u.Object != "" {
		parts = append(parts, "object="+url.PathEscape(u.Object))
	}
	if len(u.ID) > 0 {
		var b strings.Builder
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02x", c)
		}
		parts = append(parts, "id="+b.String())
	}
	return "pkcs11:" + strings.Join(parts, ";")
}
