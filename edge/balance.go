package edge

// Balances from the origin's ledger: the edge subscribes
// event.OriginBalanceSubject, opens each message with the origin's public
// key and hands the balances of a well-formed KindBalance record to the
// data plane (proxy.MergeBalance), which takes them as floors of its
// long-period counters. A message that is not signed by the origin, or not
// a well-formed balance record, is dropped and counted
// (keymesh_edge_balance_records_total{result="refused"}): a figure acts
// only with the origin's signature, so whoever may publish on the subject
// can at worst withhold figures, never lower one.

import (
	"fmt"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/event"
)

// balanceListener is the subscription and its counts.
type balanceListener struct {
	sub      *nats.Subscription
	accepted atomic.Uint64
	refused  atomic.Uint64
}

// startBalances subscribes to the origin's balances; merge takes each
// verified record's balances.
func (n *Node) startBalances(ver *event.Verifier, merge func([]event.Balance)) error {
	l := &balanceListener{}
	sub, err := n.nc.Subscribe(event.OriginBalanceSubject, func(m *nats.Msg) {
		rec, err := ver.Open(m.Data)
		if err == nil {
			err = event.CheckBalances(rec)
		}
		if err != nil {
			if l.refused.Add(1) == 1 {
				n.log.Warn("dropping a balance record that does not verify (counted in keymesh_edge_balance_records_total)", "err", err)
			}
			return
		}
		l.accepted.Add(1)
		merge(rec.Balances)
	})
	if err != nil {
		return fmt.Errorf("subscribing to origin balances: %w", err)
	}
	l.sub = sub
	n.balances = l
	desc := prometheus.NewDesc("keymesh_edge_balance_records_total",
		"Balance records from the origin: accepted (signed, well formed, merged as floors) or refused (dropped).",
		[]string{"result"}, nil)
	n.reg.MustRegister(balanceCollector{l: l, desc: desc})
	return nil
}

// BalanceStats reports the balance records the edge accepted and refused.
func (n *Node) BalanceStats() (accepted, refused uint64) {
	if n.balances == nil {
		return 0, 0
	}
	return n.balances.accepted.Load(), n.balances.refused.Load()
}

func (n *Node) stopBalances() {
	if n.balances != nil {
		_ = n.balances.sub.Unsubscribe()
	}
}

type balanceCollector struct {
	l    *balanceListener
	desc *prometheus.Desc
}

func (c balanceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c balanceCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.l.accepted.Load()), "accepted")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.l.refused.Load()), "refused")
}
