package metrics_test

import (
	"os"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

func TestMain(m *testing.M) {
	if os.Getenv(denialChildEnv) != "" {
		denialChild()
	}
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}
