package origin

// The answer to a mutation: its revision, its audit record and, with ?wait,
// the wait for the edges to apply it.

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// mutated answers a mutation: X-Revision, and body (a map or struct with
// "revision"), or no body (nil; a delete) with status 204. With ?wait the
// answer waits for the edges and reports propagation; a delete then answers
// 200 with {"revision", "propagation"}, since a 204 has no body to carry it.
func (s *Server) mutated(c *call, status int, rev uint64, body any) error {
	c.w.Header().Set("X-Revision", strconv.FormatUint(rev, 10))
	p, waiting := c.r.Context().Value(waitKey{}).(*propagation)
	if waiting && body == nil {
		status = http.StatusOK
	}
	s.auditAdmin(c, status, body)
	if waiting {
		// The change is committed: hold the answer until the edges have it.
		got := s.awaitPropagation(c, rev, p.wait)
		p.Applied, p.Pending, p.LiveEdges = got.Applied, got.Pending, got.LiveEdges
		if body == nil {
			body = &deleted{Revision: rev, Propagation: p}
		}
	}
	if body == nil {
		c.w.WriteHeader(status)
		return nil
	}
	writeJSON(c.w, status, body)
	return nil
}

// deleted is the answer to a delete given ?wait.
type deleted struct {
	Revision    uint64       `json:"revision"`
	Propagation *propagation `json:"propagation"`
}

// propagation is the ?wait= report: the live edges that had applied the
// mutation's revision when the answer was sent, and those that had not.
type propagation struct {
	Applied []string `json:"applied"`
	Pending []string `json:"pending"`
	// LiveEdges counts the live edges the wait knew of (applied +
	// pending): 0 means it proved nothing reached any edge.
	LiveEdges int `json:"live_edges"`
	// wait is the asked-for ?wait duration.
	wait time.Duration
}

// waitKey keys the request's *propagation in its context.
type waitKey struct{}

// waitFor validates ?wait before the mutation runs and, when it is given,
// returns the propagation report the handler puts in its answer. The wait
// itself happens in mutated, after the change has committed and before the
// answer is written; it fills the report in place.
func (s *Server) waitFor(c *call) (*propagation, error) {
	d, err := waitParam(c.r)
	if err != nil || c.r.URL.Query().Get("wait") == "" {
		return nil, err
	}
	p := &propagation{Applied: []string{}, Pending: []string{}, wait: d}
	c.r = c.r.WithContext(context.WithValue(c.r.Context(), waitKey{}, p))
	return p, nil
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
