package pkcs11

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		in     string
		object string
		id     []byte
		token  string
		err    string
	}{
		{in: "pkcs11:object=webhook", object: "webhook"},
		{in: "pkcs11:token=agent;object=web%20hook", object: "web hook", token: "agent"},
		{in: "pkcs11:id=%01%02%ff", id: []byte{1, 2, 0xff}},
		{in: "pkcs11:object=a;id=%0a;type=secret-key;manufacturer=SoftHSM", object: "a", id: []byte{10}},
		{in: "pkcs11:object=a?pin-value=1234", err: "query attributes"},
		{in: "pkcs11:object=a?pin-source=file:/etc/pin", err: "query attributes"},
		{in: "pkcs11:object=a;colour=blue", err: `unknown attribute "colour"`},
		{in: "pkcs11:object=a;object=b", err: "given twice"},
		{in: "pkcs11:type=private;object=a", err: "secret-key"},
		{in: "pkcs11:token=agent", err: "names no key"},
		{in: "pkcs11:object", err: "has no value"},
		{in: "file:key", err: "not a pkcs11: URI"},
		{in: "pkcs11:object=%zz", err: "invalid URL escape"},
	} {
		u, err := ParseURI(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || u.Object != tc.object || !bytes.Equal(u.ID, tc.id) || u.Token != tc.token {
			t.Errorf("%s: %+v %v", tc.in, u, err)
			continue
		}
		again, err := ParseURI(u.String())
		if err != nil || again.Object != u.Object || !bytes.Equal(again.ID, u.ID) {
			t.Errorf("%s: String() = %s does not parse back: %v", tc.in, u.String(), err)
		}
	}
}
