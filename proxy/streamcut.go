package proxy

import (
	"io"
)

// Hard budgets for streams (issue 15). A request under a token bound
// reserves its maximum at admission (tokens.go); a streamed answer
// (text/event-stream, 2xx) may use more. As its events are relayed, the
// meter's running count — what settlement would charge now: the prompt
// and the completion so far, each as the upstream reported it per chunk,
// else estimated from what was relayed — is compared with what the hold
// covers at the end of every event that carried generated text. When it
// passes, the hold is extended (tokenTable.extend) by a step (the larger of
// 64 tokens and an eighth of the reservation), else by just what was
// relayed past it — its token bounds by those tokens, its spend caps
// (budget.go) by what they cost as completion tokens at the deployment's
// pricing; when even that is refused, the edge ends the stream:
//
//   - what the client has received ends at that event's end (a blank
//     line): the rest of what was read from the upstream is dropped, so no
//     event is ever half relayed;
//   - the client then gets one last event, an OpenAI-shaped error the
//     OpenAI SDKs raise (type and code insufficient_quota), and
//     `data: [DONE]`, and the response ends;
//   - the upstream connection is closed at once, before the client has
//     read the end, so the server sees its client go away and stops
//     generating;
//   - the request is finished as any other: metered with what was
//     relayed (estimated where the upstream reported no count), settled,
//     audited with reason stream_cut and counted in
//     keymesh_edge_streams_cut_total{reason}.
//
// Nothing is buffered for it: bytes are relayed as they are read, the
// check made when an event's blank line passes. Such an answer is sent
// chunked (its length is no longer the upstream's). A whole (non-stream)
// answer is never cut: it settles in debt, as before. The served tokens
// of a bound (and the spend of a cap) are thus at most its limit plus, per
// stream in flight, one event's.

// minStreamStep is the least a stream's hold is extended by.
const minStreamStep = 64

// streamCutQuota and streamCutLimit are the last events of a stream cut by
// a quota and by tokens_per_minute or tokens_per_day: the error, then
// [DONE]. (No key, bound or count in them: the same bytes for everyone.)
var (
	streamCutQuota = []byte(`data: {"error":{"message":"the token quota of this API key, deployment or project was used up during this stream, which the edge ended here; it refills at its next refill, if any","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}` +
		"\n\ndata: [DONE]\n\n")
	streamCutLimit = []byte(`data: {"error":{"message":"tokens_per_minute or tokens_per_day of this API key, deployment or project ran out during this stream, which the edge ended here; retry later","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}` +
		"\n\ndata: [DONE]\n\n")
	streamCutBudget = []byte(`data: {"error":{"message":"the spend cap (max_budget) of this API key, deployment or project was reached during this stream, which the edge ended here; it refills at its next refill, if any","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}` +
		"\n\ndata: [DONE]\n\n")
)

// streamCutEvent is the end of a stream cut for why (budget: a spend cap
// refused, counted as a quota).
func streamCutEvent(why reason, budget bool) []byte {
	switch {
	case why == reasonTokenLimit:
		return streamCutLimit
	case budget:
		return streamCutBudget
	}
	return streamCutQuota
}

// bound puts a streamed answer under its request's hold: from now on its
// events are checked against what the hold covers.
func (m *meter) bound(t *tokenTable, h *tokenHold) {
	m.tokens, m.hold = t, h
	m.step = max(minStreamStep, h.covered/8)
}

// running is what settlement would charge for the request now: result's
// counts, without finishing anything.
func (m *meter) running() int64 {
	prompt, completion := m.prompt, m.completion
	if !m.promptExact {
		prompt = int64((m.promptChars + charsPerToken - 1) / charsPerToken)
	}
	if !m.complExact {
		completion = int64((m.relayedChars + charsPerToken - 1) / charsPerToken)
	}
	return prompt + completion
}

// withinBudget is checked at the end of each event of a bound stream: it
// extends the hold when the running count has passed what it covers, and
// reports false (the stream is cut) when the extension is refused. An
// event that carried no generated text (a usage-only chunk, [DONE]) is
// not checked: nothing more is being generated.
func (m *meter) withinBudget() bool {
	if m.relayedChars == m.budgetChars {
		return true
	}
	m.budgetChars = m.relayedChars
	h := m.hold
	need := m.running() - h.covered
	if need <= 0 {
		return true
	}
	step := max(need, m.step)
	why, refusal, ok := m.tokens.extend(h, step)
	if !ok && step > need {
		why, refusal, ok = m.tokens.extend(h, need)
	}
	if ok {
		return true
	}
	m.cut, m.cutWhy, m.cutBudget = true, why, refusal == errBudget || refusal == errBudgetTooLarge
	return false
}

// cutStream ends a stream its budget refused (the meter stopped reading at
// an event's end): the upstream connection is closed now, so the server
// stops generating, and what the client reads next is the last event and
// then the end of the body.
func (b *upstreamBody) cutStream() {
	_ = b.resp.CloseBodyStream() // not read to its end: the connection is closed, not pooled
	b.m.pend = append(b.m.pend, streamCutEvent(b.m.cutWhy, b.m.cutBudget)...)
	b.err = io.EOF
}

// noteCut records, when the request is finished, that its stream was cut.
func (s *Proxy) noteCut(out *outcome) {
	if m := out.meter; m != nil && m.cut {
		out.refused = reasonStreamCut
		s.metrics.streamsCut.WithLabelValues(reasonNames[m.cutWhy]).Inc()
	}
}
