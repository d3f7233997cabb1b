package proxy

import (
	"bytes"
	"math"
	"sync"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/keymesh/keymesh/event"
)

// Metering. With a UsageSink, every POST the edge forwards and the
// upstream answers is metered from the answer as it is relayed: the
// upstream's own token counts where it reports them (OpenAI-shaped usage of
// chat, completions, embeddings and the Responses API; TGI's details),
// else an estimate from what was relayed, marked Estimated. Nothing is
// buffered on the way to the client: an event stream is scanned line by
// line as its bytes pass, with at most maxMeterLine bytes of one line
// carried over between reads; a JSON answer is copied aside (up to
// maxMeterDoc, then only its tail) to be read once it has been relayed.
// docs/api.md ("Metering") states the rules.

// UsageSink takes the usage record of every metered request. Usage is
// called on the request path, so it must not block; u is only valid during
// the call.
type UsageSink interface {
	Usage(u *event.Usage)
}

// UsageFunc adapts a function to a UsageSink.
type UsageFunc func(u *event.Usage)

// Usage calls f(u).
func (f UsageFunc) Usage(u *event.Usage) { f(u) }

const (
	// maxMeterLine bounds the part of one event-stream line carried over
	// between reads; a longer line is relayed unread.
	maxMeterLine = 64 << 10
	// maxMeterDoc bounds the copy of a JSON answer read whole; past it
	// only the last maxMeterTail bytes are kept, where OpenAI-shaped
	// answers put their usage.
	maxMeterDoc  = 1 << 20
	maxMeterTail = 64 << 10
	// maxReportedTokens bounds a token count an upstream may report: a
	// usage with a count that is negative, fractional or larger is
	// ignored, and the request estimated.
	maxReportedTokens = 1 << 30
	// charsPerToken is the estimate's ratio of characters to tokens.
	charsPerToken = 4
	// maxMeterModel cuts the model name recorded.
	maxMeterModel = 256
)

// What the answer is read as.
const (
	meterNone = iota // not read: another media type, or encoded
	meterSSE
	meterJSON
)

// meter meters one request: set up from the request (model, prompt
// characters, whether the edge asked for usage itself), fed the answer as
// it is relayed, and read when the request finishes.
type meter struct {
	model       []byte
	promptChars int
	// strip: the edge added include_usage, so the usage-only chunks it
	// asked for are removed from what the client receives.
	strip bool
	// answered: the upstream answered (headers arrived); only then is a
	// usage record made.
	answered bool
	mode     int

	// What the answer said.
	prompt, completion, cached int64
	promptExact, complExact    bool
	invalid                    bool // a usage with nonsense in it was ignored
	relayedChars               int  // characters of generated text relayed

	// The event-stream scanner: the start of a line not yet ended, and
	// whether the line being read is past maxMeterLine (relayed unread).
	carry     []byte
	overlong  bool
	dropBlank bool   // a usage-only data line was removed: remove the blank line ending its event
	pend      []byte // in strip mode, relayed bytes the client has not read yet
	pendOff   int

	// A JSON answer: its copy, or (tail set) its last bytes.
	doc  []byte
	tail bool

	// The last chunk read fast, and in it the last string counted and the
	// characters of the others (sameShape).
	shape                            []byte
	shapeStart, shapeEnd, shapeChars int

	// reqBody holds the request body as rewritten (meterRequest).
	reqBody []byte

	// A stream under a token bound (streamcut.go): the table and hold it
	// extends, by step at least, the generated characters when the budget
	// was last checked, and whether (and why) the budget cut the stream.
	tokens      *tokenTable
	hold        *tokenHold
	step        int64
	budgetChars int
	cut         bool
	cutWhy      reason
	cutBudget   bool // a spend cap refused (cutWhy is reasonQuota)

	parser fastjson.Parser
}

var meterPool = sync.Pool{New: func() any { return new(meter) }}

func acquireMeter() *meter { return meterPool.Get().(*meter) }

func releaseMeter(m *meter) {
	if m == nil {
		return
	}
	carry, pend, doc, model, shape, reqBody := m.carry[:0], m.pend[:0], m.doc[:0], m.model[:0], m.shape[:0], m.reqBody[:0]
	if cap(reqBody) > 64<<10 {
		reqBody = nil // a large body's copy is not kept for the next one
	}
	if cap(doc) > maxMeterTail*2 {
		doc = nil // a large answer's copy is not kept for the next one
	}
	if cap(pend) > 64<<10 {
		pend = nil
	}
	p := m.parser
	*m = meter{carry: carry, pend: pend, doc: doc, model: model, shape: shape, reqBody: reqBody, parser: p}
	meterPool.Put(m)
}

// start reads the answer's header: what its body is read as. An encoded
// body (Content-Encoding other than identity) is not read, and an answer
// the edge would strip from is only stripped from when it is an event
// stream it can read.
func (m *meter) start(h *fasthttp.ResponseHeader) {
	m.answered = true
	if enc := bytes.TrimSpace(h.ContentEncoding()); len(enc) > 0 && !bytes.EqualFold(enc, []byte("identity")) {
		m.mode, m.strip = meterNone, false
		return
	}
	ct := parseContentType(h.ContentType())
	switch {
	case ct.is("text/event-stream"):
		m.mode = meterSSE
	case len(ct.media) > 0 && isJSON(ct.media):
		m.mode = meterJSON
	default:
		m.mode = meterNone
	}
	if m.mode != meterSSE {
		m.strip = false
	}
}

// feed reads one piece of the answer as it is relayed. It is for every
// mode but stripping (see filter). It returns how much of b is relayed:
// all of it, but for a stream its budget cut (streamcut.go), which ends
// at the end of an event.
func (m *meter) feed(b []byte) int {
	switch m.mode {
	case meterSSE:
		return m.scan(b, false)
	case meterJSON:
		m.keep(b)
	}
	return len(b)
}

// keep copies a JSON answer aside: whole up to maxMeterDoc, then its
// last maxMeterTail bytes.
func (m *meter) keep(b []byte) {
	if !m.tail && len(m.doc)+len(b) <= maxMeterDoc {
		m.doc = append(m.doc, b...)
		return
	}
	m.tail = true
	if len(b) >= maxMeterTail {
		m.doc = append(m.doc[:0], b[len(b)-maxMeterTail:]...)
		return
	}
	if over := len(m.doc) + len(b) - maxMeterTail; over > 0 {
		m.doc = m.doc[:copy(m.doc, m.doc[over:])]
	}
	m.doc = append(m.doc, b...)
}

// scan reads event-stream bytes line by line. With emit, the bytes to
// relay are appended to m.pend: every line but the usage-only data lines
// (and the blank line after each) the edge asked for; a line not yet
// ended is held back (an SSE event is only dispatched at its end anyway)
// until it ends or passes maxMeterLine. It returns how much of b it read:
// all of it, unless the stream's budget (streamcut.go) refused at the end
// of an event — the blank line ending it — where it stops.
func (m *meter) scan(b []byte, emit bool) int {
	total := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			switch {
			case m.overlong:
				if emit {
					m.pend = append(m.pend, b...)
				}
			case len(m.carry)+len(b) > maxMeterLine:
				// Too long to be anything the meter reads: relayed unread.
				if emit {
					m.pend = append(append(m.pend, m.carry...), b...)
				}
				m.carry, m.overlong = m.carry[:0], true
			default:
				m.carry = append(m.carry, b...)
			}
			return total
		}
		line := b[:i+1]
		b = b[i+1:]
		if m.overlong {
			m.overlong = false
			if emit {
				m.pend = append(m.pend, line...)
			}
			continue
		}
		if len(m.carry) > 0 {
			m.carry = append(m.carry, line...)
			line = m.carry
		}
		blank := len(line) <= 2 && (line[0] == '\n' || line[0] == '\r') // an event's end
		if keep := m.line(line); emit && keep {
			m.pend = append(m.pend, line...)
		}
		m.carry = m.carry[:0]
		if blank && m.hold != nil && !m.withinBudget() {
			return total - len(b)
		}
	}
	return total
}

// end reads the line a stream ended in the middle of (no line ending:
// an SSE client drops it, but the upstream did send it) and, with emit,
// relays it as it came unless it is a usage-only chunk the edge asked for.
func (m *meter) end(emit bool) {
	if len(m.carry) > 0 && m.mode == meterSSE {
		if keep := m.line(m.carry); emit && keep {
			m.pend = append(m.pend, m.carry...)
		}
	}
	m.carry = m.carry[:0]
}

var (
	sseData = []byte("data:")
	sseDone = []byte("[DONE]")
)

// line reads one event-stream line (with its line ending) and reports
// whether it is relayed: false only for a usage-only chunk the edge asked
// for, and the blank line ending its event.
func (m *meter) line(raw []byte) bool {
	l := bytes.TrimRight(raw, "\r\n")
	if len(l) == 0 {
		if m.dropBlank {
			m.dropBlank = false
			return false
		}
		return true
	}
	m.dropBlank = false
	if !bytes.HasPrefix(l, sseData) {
		return true // event:, id:, retry:, comments
	}
	payload := bytes.TrimSpace(l[len(sseData):])
	if len(payload) == 0 || payload[0] != '{' || bytes.Equal(payload, sseDone) {
		return true
	}
	usageOnly, ok := m.fastChunk(payload)
	if !ok {
		v, err := m.parser.ParseBytes(payload)
		if err != nil {
			return true
		}
		usageOnly = m.chunk(v)
	}
	if usageOnly && m.strip {
		m.dropBlank = true
		return false
	}
	return true
}

// chunk reads one streamed JSON object: its usage, if any, and the text it
// carries. It reports whether the chunk is a usage-only one: "choices" an
// empty array and "usage" an object (what include_usage adds).
func (m *meter) chunk(v *fastjson.Value) (usageOnly bool) {
	if u := v.Get("usage"); u != nil && u.Type() == fastjson.TypeObject {
		m.usage(u)
		choices := v.Get("choices")
		usageOnly = choices != nil && choices.Type() == fastjson.TypeArray && len(choices.GetArray()) == 0
	}
	m.relayedChars += choicesChars(v, "delta")
	// The Responses API: text deltas, and the usage of response.completed
	// (and of response.incomplete and response.failed).
	if t := v.GetStringBytes("type"); len(t) > 0 {
		if string(t) == "response.output_text.delta" || string(t) == "response.refusal.delta" ||
			string(t) == "response.reasoning_text.delta" {
			m.relayedChars += runes(v.GetStringBytes("delta"))
		}
		if u := v.Get("response", "usage"); u != nil && u.Type() == fastjson.TypeObject {
			m.usage(u)
		}
	}
	// TGI's /generate_stream: one token per event, details in the last.
	if tok := v.Get("token"); tok != nil && !tok.GetBool("special") {
		m.relayedChars += runes(tok.GetStringBytes("text"))
	}
	if d := v.Get("details"); d != nil && d.Type() == fastjson.TypeObject {
		m.details(d)
	}
	return usageOnly
}

// choicesChars counts the generated text of an answer's choices: under
// each choice's msg ("delta" streamed, "message" whole) the content,
// reasoning content and tool-call arguments, and a completion's text.
func choicesChars(v *fastjson.Value, msg string) int {
	n := 0
	for _, c := range v.GetArray("choices") {
		n += runes(c.GetStringBytes("text"))
		d := c.Get(msg)
		if d == nil {
			continue
		}
		n += runes(d.GetStringBytes("content")) + runes(d.GetStringBytes("reasoning_content"))
		for _, tc := range d.GetArray("tool_calls") {
			n += runes(tc.GetStringBytes("function", "arguments"))
		}
	}
	return n
}

func runes(b []byte) int { return utf8.RuneCount(b) }

// usage takes an OpenAI-shaped usage object: prompt_tokens,
// completion_tokens and prompt_tokens_details.cached_tokens, or the
// Responses API's input_tokens, output_tokens and
// input_tokens_details.cached_tokens. The last valid one wins (a stream
// with continuous usage reports running totals); one with a count that is
// not a sane token count is ignored.
func (m *meter) usage(u *fastjson.Value) {
	var f usageFields
	for i, path := range usagePaths {
		f[i].n, f[i].ok, f[i].bad = tokens(u, path...)
	}
	m.takeUsage(&f)
}

// usageFields are the counts a usage object may hold, in usagePaths'
// order: each as tokens reads it.
type usageFields [6]struct {
	n       int64
	ok, bad bool
}

var usagePaths = [...][]string{{"prompt_tokens"}, {"input_tokens"}, {"completion_tokens"}, {"output_tokens"},
	{"prompt_tokens_details", "cached_tokens"}, {"input_tokens_details", "cached_tokens"}}

// takeUsage is usage's rule on the fields read.
func (m *meter) takeUsage(f *usageFields) {
	p, c, k := f[0], f[2], f[4]
	if !p.ok {
		p = f[1]
	}
	if !c.ok {
		c = f[3]
	}
	if !k.ok {
		k = f[5]
	}
	if p.bad || c.bad || k.bad {
		m.invalid = true
		return
	}
	if !p.ok && !c.ok {
		return // not a usage this edge can read
	}
	m.prompt, m.completion, m.cached = p.n, c.n, min(k.n, p.n)
	m.promptExact, m.complExact = true, true
}

// details takes TGI's details: generated_tokens, and the prompt's tokens
// when it reports them (prefill, with decoder_input_details; or a
// stream's input_length).
func (m *meter) details(d *fastjson.Value) {
	gen, ok, bad := tokens(d, "generated_tokens")
	if bad {
		m.invalid = true
		return
	}
	if !ok {
		return
	}
	m.completion, m.complExact = gen, true
	if n, ok, bad := tokens(d, "input_length"); ok && !bad {
		m.prompt, m.promptExact = n, true
	} else if pre := d.GetArray("prefill"); len(pre) > 0 {
		m.prompt, m.promptExact = int64(len(pre)), true
	}
}

// tokens reads a token count at keys: ok when present and not null, bad
// when present and not an integer in [0, maxReportedTokens].
func tokens(v *fastjson.Value, keys ...string) (n int64, ok, bad bool) {
	t := v.Get(keys...)
	if t == nil || t.Type() == fastjson.TypeNull {
		return 0, false, false
	}
	f, err := t.Float64()
	if err != nil || f < 0 || f > maxReportedTokens || f != math.Trunc(f) {
		return 0, true, true
	}
	return int64(f), true, false
}

// finishDoc reads a JSON answer once it has been relayed: its usage (or
// TGI's details), and for the estimate the text of its choices. A tail is
// searched for its last "usage" object.
func (m *meter) finishDoc() {
	if m.mode != meterJSON || len(m.doc) == 0 {
		return
	}
	if m.tail {
		if obj := lastUsageObject(m.doc); obj != nil {
			if u, err := m.parser.ParseBytes(obj); err == nil {
				m.usage(u)
			}
		}
		return
	}
	if m.fastDoc() {
		return
	}
	m.finishDocFull()
}

// finishDocFull is finishDoc's reading of a whole document: parsed, then
// looked up.
func (m *meter) finishDocFull() {
	v, err := m.parser.ParseBytes(m.doc)
	if err != nil {
		return
	}
	docs := []*fastjson.Value{v}
	if v.Type() == fastjson.TypeArray {
		docs = v.GetArray() // TGI's "/" answers a list
	}
	var prompt, compl int64
	allP, allC := len(docs) > 0, len(docs) > 0
	for _, d := range docs {
		one := meter{}
		if u := d.Get("usage"); u != nil && u.Type() == fastjson.TypeObject {
			one.usage(u)
		}
		if dt := d.Get("details"); dt != nil && dt.Type() == fastjson.TypeObject && !one.complExact {
			one.details(dt)
		}
		m.invalid = m.invalid || one.invalid
		prompt, compl = prompt+one.prompt, compl+one.completion
		allP, allC = allP && one.promptExact, allC && one.complExact
		if len(docs) == 1 {
			m.cached = one.cached
		}
		m.relayedChars += choicesChars(d, "message") + runes(d.GetStringBytes("generated_text"))
		for _, o := range d.GetArray("output") { // the Responses API
			for _, c := range o.GetArray("content") {
				m.relayedChars += runes(c.GetStringBytes("text"))
			}
		}
	}
	if allP || allC {
		m.prompt, m.completion = prompt, compl
		m.promptExact, m.complExact = allP, allC
	}
}

var usageKey = []byte(`"usage"`)

// lastUsageObject finds, in the tail of a JSON document, the object of its
// last "usage" key: a quote no backslash escapes (inside a JSON string
// every quote is escaped, so generated text cannot forge one), then a
// colon and a balanced object.
func lastUsageObject(b []byte) []byte {
	for end := len(b); end > 0; {
		i := bytes.LastIndex(b[:end], usageKey)
		if i < 0 {
			return nil
		}
		end = i
		bs := 0
		for j := i - 1; j >= 0 && b[j] == '\\'; j-- {
			bs++
		}
		if bs%2 == 1 {
			continue
		}
		rest := bytes.TrimLeft(b[i+len(usageKey):], " \t\r\n")
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		rest = bytes.TrimLeft(rest[1:], " \t\r\n")
		if n := valueEnd(rest); n > 0 && rest[0] == '{' {
			return rest[:n]
		}
	}
	return nil
}

// result is the request's usage as recorded: the upstream's counts where
// it reported them, else the estimate, and whether any count is estimated.
// An upstream error (status 400 or more) that reports nothing generated
// nothing: it counts zero, not estimated.
func (m *meter) result(status int) (prompt, completion, cached int64, estimated bool) {
	m.finishDoc()
	if m.promptExact && m.complExact {
		return m.prompt, m.completion, m.cached, false
	}
	if status >= 400 && !m.promptExact && !m.complExact {
		return 0, 0, 0, false
	}
	prompt, completion = m.prompt, m.completion
	if !m.promptExact {
		prompt = int64((m.promptChars + charsPerToken - 1) / charsPerToken)
	}
	if !m.complExact {
		completion = int64((m.relayedChars + charsPerToken - 1) / charsPerToken)
	}
	return prompt, completion, 0, true
}

// meterUsage makes the usage record of a finished request and hands it to
// the sink; it returns the counts for the audit record and the metric.
func (s *Proxy) meterUsage(ctx *fasthttp.RequestCtx, out *outcome) {
	m := out.meter
	status := ctx.Response.StatusCode()
	prompt, compl, cached, est := m.result(status)
	out.usage = usageCounts{prompt: prompt, completion: compl, cached: cached, estimated: est, ok: true}
	s.metrics.tokens(out.dep.Name, prompt, compl, cached)
	if s.cfg.Usage == nil {
		return // metered only to settle a token reservation
	}
	start := ctx.Time()
	// The edge's own id, never the client's X-Request-Id: a client
	// repeating one must not have its records deduplicated away. Made in
	// one buffer, then one string (a concatenation cost twice as much).
	var idBuf [64 + requestIDLen]byte
	id := append(append(idBuf[:0], s.cfg.EdgeID...), '-')
	id = appendRequestID(id)
	u := usageRecords.Get().(*event.Usage)
	defer func() { *u = event.Usage{}; usageRecords.Put(u) }() // the sink keeps no pointer (UsageSink)
	*u = event.Usage{
		ID:         string(id),
		Edge:       s.cfg.EdgeID,
		Project:    out.dep.Project,
		Deployment: out.dep.ID,
		Model:      s.modelName(m.model),

		PromptTokens: prompt, CompletionTokens: compl, CachedTokens: cached, Estimated: est,
		Status: status, DurationMS: out.took.Milliseconds(), Time: start.UTC(),
	}
	if out.key != nil {
		u.KeyID, u.Project = out.key.ID, out.key.Project
	}
	s.cfg.Usage.Usage(u)
}

// usageRecords are the records handed to the UsageSink, which keeps none.
var usageRecords = sync.Pool{New: func() any { return new(event.Usage) }}

// modelName returns model as a string, the last one made if it is the
// same (most requests on an edge name one of a few models): a string is
// immutable, so records may share it.
func (s *Proxy) modelName(model []byte) string {
	if len(model) == 0 {
		return ""
	}
	if last := s.lastModel.Load(); last != nil && *last == string(model) {
		return *last
	}
	name := string(model)
	s.lastModel.Store(&name)
	return name
}

// usageCounts is what metering found, for the audit record.
type usageCounts struct {
	prompt, completion, cached int64
	estimated, ok              bool
}
