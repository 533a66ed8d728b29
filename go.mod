module github.com/hmac-agent/hmac-agent

go 1.26
