package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// edgeInfo is one entry of GET /v1/edges.
type edgeInfo struct {
	ID              string    `json:"id"`
	Site            string    `json:"site"`
	Address         string    `json:"address"`
	AppliedRevision uint64    `json:"applied_revision"`
	LastSeen        time.Time `json:"last_seen"`
	Live            bool      `json:"live"`
	RelayedBy       string    `json:"relayed_by"`
}

// edges returns the origin's edge registry, by id.
func (s *stack) edgeRegistry() map[string]edgeInfo {
	s.t.Helper()
	var list []edgeInfo
	s.call(http.MethodGet, "/v1/edges", nil, &list)
	out := map[string]edgeInfo{}
	for _, e := range list {
		out[e.ID] = e
	}
	return out
}

// auditRecords returns GET /v1/audit?<query> decoded, and its raw body.
func (s *stack) auditRecords(query string) ([]map[string]any, string) {
	s.t.Helper()
	var raw json.RawMessage
	if _, err := s.api.Do(context.Background(), http.MethodGet, "/v1/audit?"+query, nil, &raw); err != nil {
		s.t.Fatalf("GET /v1/audit?%s: %v", query, err)
	}
	var page struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(raw, &page); err != nil {
		s.t.Fatalf("audit body %s: %v", raw, err)
	}
	return page.Items, string(raw)
}

// propagationReport is the ?wait= part of a mutation's answer.
type propagationReport struct {
	Revision    uint64 `json:"revision"`
	Propagation *struct {
		Applied []string `json:"applied"`
		Pending []string `json:"pending"`
	} `json:"propagation"`
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
