package cache

import "github.com/keymesh/keymesh/event"

// perms is a key's permission set as a bitmask, so a permission check on the
// hot path is one AND.
type perms uint32

var permBits = func() map[string]perms {
	m := make(map[string]perms, len(event.Permissions))
	for i, p := range event.Permissions {
		m[p] = 1 << i
	}
	return m
}()

// permBit returns p's bit, or 0 for an unknown name.
func permBit(p string) perms { return permBits[p] }
