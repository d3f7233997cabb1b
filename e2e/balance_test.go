package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	kmstack "github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin"
)

// balanceStack is newStack with an origin that publishes ledger balances
// every 100 ms and refreshes them every 300 ms.
func balanceStack(t *testing.T) *stack {
	t.Helper()
	keys, err := natsauth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ns := startNATS(t, keys)
	s := newStackWith(t, kmstack.Config{NATSURL: ns.ClientURL(), NATSKeys: keys, Origin: func(c *origin.Config) {
		c.BalanceInterval, c.BalanceRefresh = 100*time.Millisecond, 300*time.Millisecond
	}})
	s.nats = ns
	return s
}

// quotaKey creates a key on d whose quota is requests a UTC day.
func (s *stack) quotaKey(d *bench.Deployment, requests int) *bench.Key {
	s.t.Helper()
	k := s.key(d.ID)
	rev := s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID,
		map[string]any{"quota": map[string]any{"requests": requests, "refill": "daily"}}, nil)
	k.Revision = rev
	return k
}

// quotaLeft reads the key's remaining quota at edge e (GET /v1/key spends
// nothing).
func quotaLeft(e *edge.Node, secret string) (int64, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+e.Addr()+"/v1/key", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-API-Key", secret)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/key: %d", resp.StatusCode)
	}
	var a struct {
		Remaining struct {
			Quota *int64 `json:"quota"`
		} `json:"remaining"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return 0, err
	}
	if a.Remaining.Quota == nil {
		return 0, fmt.Errorf("GET /v1/key: no remaining quota")
	}
	return *a.Remaining.Quota, nil
}

// The ledger of record survives edge restarts: a key's daily quota of 3
// requests is spent at one edge; that edge stops, and a new one, whose
// counters start empty, learns from the origin's signed balance that the
// quota is spent and refuses the key's next request (without the balance
// it would grant three more).
func TestRestartedEdgeLearnsSpentQuotaFromTheLedger(t *testing.T) {
	s := balanceStack(t)
	d := s.deployment("chat", nil)
	k := s.quotaKey(d, 3)
	e1 := s.startEdge(edgeOpts{})
	waitApplied(t, k.Revision, e1)
	for i := range 3 {
		if st, body := chat(t, e1, withKey(k)); st != http.StatusOK {
			t.Fatalf("request %d: %d %s", i+1, st, body)
		}
	}
	if st, body := chat(t, e1, withKey(k)); st != http.StatusTooManyRequests || errorCode(t, body) != "INSUFFICIENT_QUOTA" {
		t.Fatalf("the 4th request at the edge that counted: %d %s", st, body)
	}
	// The three requests reach the ledger.
	testutil.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if stored, _, _ := s.origin.UsageStats(); stored < 3 {
			return fmt.Errorf("the ledger stored %d records", stored)
		}
		return nil
	})
	if err := e1.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}

	e2 := s.startEdge(edgeOpts{})
	waitApplied(t, k.Revision, e2)
	testutil.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		left, err := quotaLeft(e2, k.Secret)
		if err != nil {
			return err
		}
		if left != 0 {
			return fmt.Errorf("the new edge says %d requests are left", left)
		}
		return nil
	})
	if st, body := chat(t, e2, withKey(k)); st != http.StatusTooManyRequests || errorCode(t, body) != "INSUFFICIENT_QUOTA" {
		t.Fatalf("the restarted edge granted a spent quota: %d %s", st, body)
	}
	if acc, ref := e2.BalanceStats(); acc == 0 || ref != 0 {
		t.Fatalf("balance records: %d accepted, %d refused", acc, ref)
	}
}

// A balance acts only with the origin's signature: records sealed by
// another key, unsigned ones and garbage on the balance subject are
// dropped and counted, and the key's quota is untouched.
func TestEdgeRefusesForgedBalances(t *testing.T) {
	s := balanceStack(t)
	d := s.deployment("chat", nil)
	k := s.quotaKey(d, 3)
	e := s.startEdge(edgeOpts{})
	waitApplied(t, k.Revision, e)

	_, forger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := event.NewSigner(forger)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Now().UTC().Unix() / 86400
	spent := &event.Record{Kind: event.KindBalance, Time: time.Now(), Balances: []event.Balance{
		{Scope: event.LimitScopeKey, ID: k.ID, Kind: event.LimitQuotaRequests, Period: day, Used: 1000, AsOf: time.Now()}}}
	forged, err := sig.Seal(spent)
	if err != nil {
		t.Fatal(err)
	}
	unsigned, err := json.Marshal(spent)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := s.natsConn() // an origin credential: the subject's only publisher
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msgs := [][]byte{forged, unsigned, append(make([]byte, ed25519.SignatureSize), unsigned...), []byte("garbage")}
	for _, m := range msgs {
		if err := nc.Publish(event.OriginBalanceSubject, m); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, ref := e.BalanceStats(); ref < uint64(len(msgs)) {
			return fmt.Errorf("%d refused", ref)
		}
		return nil
	})
	if left, err := quotaLeft(e, k.Secret); err != nil || left != 3 {
		t.Fatalf("after forged balances: %d left (%v)", left, err)
	}
	if st, body := chat(t, e, withKey(k)); st != http.StatusOK {
		t.Fatalf("a forged balance refused the key: %d %s", st, body)
	}
	if !strings.Contains(s.logs.String(), "dropping a balance record") {
		t.Fatal("the dropped balance records were not logged")
	}
}
