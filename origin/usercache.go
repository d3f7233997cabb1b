package origin

import (
	"context"
	"sync"
	"time"
)

// userCache keeps what the auth middleware read of each user (name and
// token version) for ttl, so that an admin request costs no query.
//
// Revocation is still immediate on every replica sharing the store: an
// entry expires ttl after its read began (not after it returned, so a read
// whose snapshot predates a commit cannot outlive commit+ttl), and every
// change that revokes tokens answers only once ttl has passed since it
// committed (Server.revoked). By the time the caller hears "done", no
// replica holds an entry older than the change, and every replica refuses
// the revoked tokens. The revoking replica forgets its own entry at once.
type userCache struct {
	ttl   time.Duration
	load  func(ctx context.Context, id string) (*User, error)
	mu    sync.Mutex
	users map[string]cachedUser
}

type cachedUser struct {
	u       *User
	expires time.Time
}

// maxCachedUsers bounds the cache; past it, it starts over.
const maxCachedUsers = 10_000

func newUserCache(ttl time.Duration, load func(ctx context.Context, id string) (*User, error)) *userCache {
	return &userCache{ttl: ttl, load: load, users: map[string]cachedUser{}}
}

// get returns the user with id (ErrNotFound if there is none); only found
// users are cached, and only the holders of jwt.key can make tokens for
// ids that do not exist.
func (c *userCache) get(ctx context.Context, id string) (*User, error) {
	start := time.Now()
	c.mu.Lock()
	e, ok := c.users[id]
	c.mu.Unlock()
	if ok && start.Before(e.expires) {
		return e.u, nil
	}
	u, err := c.load(ctx, id)
	if err != nil || c.ttl <= 0 {
		return u, err
	}
	c.mu.Lock()
	if len(c.users) >= maxCachedUsers {
		c.users = map[string]cachedUser{}
	}
	if cur, ok := c.users[id]; !ok || cur.expires.Before(start.Add(c.ttl)) {
		c.users[id] = cachedUser{u: u, expires: start.Add(c.ttl)}
	}
	c.mu.Unlock()
	return u, nil
}

// forget drops id's entry.
func (c *userCache) forget(id string) {
	c.mu.Lock()
	delete(c.users, id)
	c.mu.Unlock()
}
