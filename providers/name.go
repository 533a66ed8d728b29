package providers

import "fmt"

// MaxKeyNameLength bounds key names so that they fit every provider's
// labels and file names.
const MaxKeyNameLength = 128

// CheckKeyName returns an error wrapping ErrInvalidArgument unless name is
// 1 to 128 characters of letters, digits, '.', '_' and '-', not starting
// with '.' or '-'. The rule keeps names safe as file names, PKCS#11 labels
// and command-line arguments.
func CheckKeyName(name string) error {
	if name == "" || len(name) > MaxKeyNameLength {
		return fmt.Errorf("%w: key name must be 1 to %d characters", ErrInvalidArgument, MaxKeyNameLength)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("%w: key name %q must not start with %q", ErrInvalidArgument, name, name[0])
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("%w: key name %q: only letters, digits, '.', '_' and '-' are allowed", ErrInvalidArgument, name)
		}
	}
	return nil
}
