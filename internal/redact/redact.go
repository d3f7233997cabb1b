// Package redact takes credentials out of values before they are logged or
// shown: keymesh's binaries and the origin log the URLs they connect to,
// and those may carry a password or a token.
package redact

import (
	"net/url"
	"strings"
)

// Hidden replaces what was taken out.
const Hidden = "REDACTED"

// URLs returns s, a URL or a comma-separated list of them (as NATS takes),
// with the credentials of each hidden: in user:password@ the password is
// replaced by Hidden; a lone user@ is replaced whole, since NATS reads it as
// a token. An entry with userinfo that does not parse is replaced whole: its
// text may hold a secret. Entries without "@" are returned as they are.
func URLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = redactURL(p)
	}
	return strings.Join(parts, ",")
}

func redactURL(raw string) string {
	if !strings.Contains(raw, "@") {
		return raw
	}
	trimmed := strings.TrimSpace(raw)
	scheme := ""
	if !strings.Contains(trimmed, "://") {
		scheme = "nats://" // NATS accepts host:port; parse it as it would
	}
	u, err := url.Parse(scheme + trimmed)
	if err != nil || u.User == nil {
		return Hidden
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		u.User = url.UserPassword(u.User.Username(), Hidden)
	} else {
		u.User = url.User(Hidden)
	}
	return strings.TrimPrefix(u.String(), scheme)
}
