package origin

import "net/http"

// listEdges serves GET /v1/edges.
func (s *Server) listEdges(c *call) error {
	writeJSON(c.w, http.StatusOK, []any{})
	return nil
}
