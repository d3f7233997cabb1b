package origin

// The answer to a mutation: its revision, its audit record and, with ?wait,
// the wait for the edges to apply it.

import (
	"net/http"
	"strconv"
	"time"

	"github.com/keymesh/keymesh/api"
)

// mutated answers a mutation: X-Revision, and body (an api type with a
// Propagation member, which report points at), or no body (nil; a delete)
// with status 204, and records it in the audit log as acting on target.
// With ?wait (c.waiting) the answer waits for the edges and reports
// propagation in *report; a delete then answers 200 with api.Deleted, since
// a 204 has no body to carry it.
func (s *Server) mutated(c *call, status int, rev uint64, body any, report **api.Propagation, target auditTarget) error {
	c.w.Header().Set("X-Revision", strconv.FormatUint(rev, 10))
	if c.waiting && body == nil {
		status = http.StatusOK
	}
	s.auditAdmin(c, status, target)
	if c.waiting {
		// The change is committed: hold the answer until the edges have it.
		p := s.awaitPropagation(c, rev, c.wait)
		if body == nil {
			writeJSON(c.w, status, &api.Deleted{Revision: rev, Propagation: p})
			return nil
		}
		*report = p
	}
	if body == nil {
		c.w.WriteHeader(status)
		return nil
	}
	writeJSON(c.w, status, body)
	return nil
}

// readWait validates ?wait before the mutation runs and records it in c
// (c.waiting, c.wait). The wait itself happens in mutated, after the change
// has committed and before the answer is written.
func (c *call) readWait() error {
	d, err := waitParam(c.r)
	if err != nil || c.r.URL.Query().Get("wait") == "" {
		return err
	}
	c.waiting, c.wait = true, d
	return nil
}

// waitParam parses ?wait=<duration> (0 when absent).
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, err2 := strconv.Atoi(v); err2 == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < 0 || d > 5*time.Minute {
		return 0, validation("wait", "must be a duration such as 2s, at most 5m")
	}
	return d, nil
}
