package agent_test

import (
	"crypto/hmac"
	"crypto/sha256"
)

func providertestTag(key, msg []byte) ([]byte, error) {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil), nil
}
