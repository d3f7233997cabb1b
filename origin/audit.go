package origin

import "net/http"

// listAudit serves GET /v1/audit.
func (s *Server) listAudit(c *call) error {
	writeJSON(c.w, http.StatusOK, []any{})
	return nil
}
