package e2e

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
)

// Rotation: the new secret works at once; the old one until the grace period
// ends, then never again; with no grace, not even on the next request.
func TestRotationGracePeriod(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	expect(t, e, withKey(k), 200, "") // the old secret is cached at the edge

	rotate := func(grace int) *bench.Key {
		var fresh bench.Key
		rev := s.call(http.MethodPost, "/v1/projects/"+project+"/keys/"+k.ID+"/rotate",
			map[string]any{"grace_seconds": grace}, &fresh)
		s.secrets = append(s.secrets, fresh.Secret)
		waitApplied(t, rev, e)
		return &fresh
	}

	// The origin sets the old secret's end at its own now+grace, some time
	// between start and the rotate call's return. So every answer received
	// before start+grace must accept the old secret, and some answer after
	// returned+grace (plus the poll's slack) must refuse it.
	const grace = 5 * time.Second
	start := time.Now()
	fresh := rotate(int(grace / time.Second))
	returned := time.Now()
	expect(t, e, withKey(fresh), 200, "")
	accepted, refusedAt := 0, time.Time{}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := returned.Add(grace + 10*time.Second); refusedAt.IsZero(); <-tick.C {
		st, body := chat(t, e, withKey(k))
		received := time.Now()
		switch {
		case st == http.StatusOK:
			accepted++
		case received.Before(start.Add(grace)):
			t.Fatalf("old secret refused %v after the rotation, within its %v grace period: %d %s", received.Sub(start), grace, st, body)
		case st == http.StatusUnauthorized:
			refusedAt = received
		default:
			t.Fatalf("old secret after its grace period: %d %s, want 401", st, body)
		}
		if refusedAt.IsZero() && received.After(deadline) {
			t.Fatalf("old secret still accepted %v after the rotation (grace %v)", received.Sub(start), grace)
		}
	}
	if accepted == 0 {
		// Only possible when the rotation took longer than the grace period
		// to reach the edge: then nothing here checked the grace half.
		t.Fatalf("old secret never checked within its %v grace period (the rotation took %v)", grace, returned.Sub(start))
	}
	t.Logf("old secret accepted %d times, refused %v after the rotation", accepted, refusedAt.Sub(start))
	expect(t, e, withKey(k), 401, "AUTHENTICATION_FAILED")
	expect(t, e, withKey(fresh), 200, "")

	newer := rotate(0)
	expect(t, e, withKey(fresh), 401, "AUTHENTICATION_FAILED")
	expect(t, e, withKey(newer), 200, "")
}

// expires_in_days and a date-only expires_at are accepted and enforced.
func TestExpiryForms(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	e := s.startEdge(edgeOpts{})
	var k struct {
		bench.Key
		ExpiresAt *time.Time `json:"expires_at"`
	}
	s.call(http.MethodPost, "/v1/projects/"+project+"/keys",
		map[string]any{"deployments": []string{d.ID}, "expires_in_days": 2}, &k)
	s.secrets = append(s.secrets, k.Secret)
	if k.ExpiresAt == nil || k.ExpiresAt.Sub(time.Now()) < 47*time.Hour || k.ExpiresAt.Sub(time.Now()) > 49*time.Hour {
		t.Fatalf("expires_in_days 2 gave %v", k.ExpiresAt)
	}
	expect(t, e, map[string]string{"X-API-Key": k.Secret}, 200, "")

	tomorrow := time.Now().UTC().AddDate(0, 0, 1).Format("2006-01-02")
	rev := s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID, map[string]any{"expires_at": tomorrow}, &k)
	want, _ := time.Parse("2006-01-02", tomorrow)
	if k.ExpiresAt == nil || !k.ExpiresAt.Equal(want) {
		t.Fatalf("date %s became %v, want 00:00 UTC", tomorrow, k.ExpiresAt)
	}
	waitApplied(t, rev, e)
	expect(t, e, map[string]string{"X-API-Key": k.Secret}, 200, "")

	var apiErr *bench.APIError
	_, err := s.api.Do(t.Context(), http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID, map[string]any{"expires_at": "next week"}, nil)
	if !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("unknown expiry format: %v", err)
	}
}
