package proxy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// Unit tests of the meter's readings: the request rewrite, the event-stream
// scanner and the JSON answers. The request path end to end is in
// meter_handler_test.go.

const (
	chatChunk1    = `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}` + "\n\n"
	chatChunk2    = `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" world!"},"finish_reason":"stop"}]}` + "\n\n"
	chatUsage     = `data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":4}}}` + "\n\n"
	sseDoneLine   = "data: [DONE]\n\n"
	chatStreamAll = chatChunk1 + chatChunk2 + chatUsage + sseDoneLine
)

func sseMeter(strip bool) *meter {
	m := &meter{strip: strip, promptChars: 40}
	var h fasthttp.ResponseHeader
	h.SetContentType("text/event-stream")
	m.start(&h)
	return m
}

// runStrip feeds the pieces through a strip-mode meter as upstreamBody does
// and returns what the client would get.
func runStrip(m *meter, pieces ...[]byte) []byte {
	var out []byte
	for _, p := range pieces {
		m.scan(p, true)
		out = append(out, m.pend...)
		m.pend = m.pend[:0]
	}
	m.end(true)
	return append(out, m.pend...)
}

// The scanner is incremental: a stream split at any byte boundary reads
// the same, in both modes, and strip mode relays exactly the stream less
// its usage-only event.
func TestMeterSplitAtEveryByte(t *testing.T) {
	stream := []byte(chatStreamAll)
	want := chatChunk1 + chatChunk2 + sseDoneLine
	for i := 0; i <= len(stream); i++ {
		for _, strip := range []bool{false, true} {
			m := sseMeter(strip)
			var got []byte
			if strip {
				got = runStrip(m, stream[:i], stream[i:])
				if string(got) != want {
					t.Fatalf("split at %d: client got %q", i, got)
				}
			} else {
				m.feed(stream[:i])
				m.feed(stream[i:])
			}
			p, c, k, est := m.result(200)
			if p != 11 || c != 3 || k != 4 || est {
				t.Fatalf("split at %d, strip %v: %d/%d/%d est %v", i, strip, p, c, k, est)
			}
		}
	}
	// And one byte at a time.
	m := sseMeter(true)
	var pieces [][]byte
	for i := range stream {
		pieces = append(pieces, stream[i:i+1])
	}
	if got := runStrip(m, pieces...); string(got) != want {
		t.Fatalf("byte by byte: %q", got)
	}
}

// CRLF line endings and "data:" without a space are read too; a chunk with
// usage and choices (continuous usage) is never removed.
func TestMeterStreamVariants(t *testing.T) {
	in := "data:" + strings.TrimPrefix(strings.ReplaceAll(chatChunk1, "\n", "\r\n"), "data: ") +
		`data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}` + "\n\n" + sseDoneLine
	m := sseMeter(true)
	if got := runStrip(m, []byte(in)); string(got) != in {
		t.Fatalf("relayed %q", got)
	}
	if p, c, _, est := m.result(200); p != 5 || c != 2 || est {
		t.Fatalf("%d/%d est %v", p, c, est)
	}
}

// A cut stream is estimated from what was relayed: the prompt's characters
// and the deltas' characters, four to a token, rounded up.
func TestMeterEstimatesCutStream(t *testing.T) {
	m := sseMeter(false)
	m.feed([]byte(chatChunk1 + chatChunk2[:20]))
	p, c, k, est := m.result(200)
	if !est || p != 10 || c != 2 || k != 0 { // 40 chars; "Hello" = 5 chars
		t.Fatalf("%d/%d/%d est %v", p, c, k, est)
	}
}

// A hostile upstream cannot make the meter hold more than maxMeterLine of
// a line, nor record nonsense: huge lines, no newline, invalid JSON,
// negative, fractional and absurd counts are ignored and estimated.
func TestMeterHostileUpstream(t *testing.T) {
	huge := bytes.Repeat([]byte("x"), 4<<20)
	for _, strip := range []bool{false, true} {
		m := sseMeter(strip)
		var relayed int
		in := append([]byte("data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"x\":\""), huge...)
		for off := 0; off < len(in); off += 4096 {
			piece := in[off:min(off+4096, len(in))]
			m.scan(piece, strip)
			relayed += len(m.pend)
			m.pend = m.pend[:0]
			if cap(m.carry) > 2*maxMeterLine {
				t.Fatalf("carry grew to %d", cap(m.carry))
			}
		}
		m.scan([]byte("\"}\n\n"), strip)
		relayed += len(m.pend)
		if strip && relayed != len(in)+4 {
			t.Fatalf("relayed %d of %d bytes", relayed, len(in)+4)
		}
		if _, _, _, est := m.result(200); !est {
			t.Fatal("an unread overlong line's usage was taken")
		}
	}
	for _, bad := range []string{
		`data: {"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":3}}`,
		`data: {"choices":[],"usage":{"prompt_tokens":1.5,"completion_tokens":3}}`,
		`data: {"choices":[],"usage":{"prompt_tokens":1e300,"completion_tokens":3}}`,
		`data: {"choices":[],"usage":{"prompt_tokens":"7","completion_tokens":3}}`,
		`data: {"choices":[],"usage":{"prompt_tokens":2000000000,"completion_tokens":3}}`,
		`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":-1}}}`,
		`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}`, // invalid JSON
		`data: {"choices":[],"usage":{"total_tokens":5}}`,
	} {
		m := sseMeter(true)
		got := runStrip(m, []byte(bad+"\n\n"+sseDoneLine))
		p, c, _, est := m.result(200)
		if !est || p != 10 || c != 0 {
			t.Errorf("%s: %d/%d est %v", bad, p, c, est)
		}
		// A usage-only chunk (the edge asked for it) is removed whole or
		// relayed whole, never cut.
		if string(got) != bad+"\n\n"+sseDoneLine && string(got) != sseDoneLine {
			t.Errorf("%s relayed as %q", bad, got)
		}
	}
	// A last line without its line ending is read too, and relayed whole.
	for _, strip := range []bool{false, true} {
		m := sseMeter(strip)
		in := chatChunk1 + strings.TrimSuffix(chatUsage, "\n\n")
		got := runStrip(m, []byte(in))
		if p, c, _, est := m.result(200); p != 11 || c != 3 || est {
			t.Fatalf("unterminated usage line: %d/%d est %v", p, c, est)
		}
		if strip && string(got) != chatChunk1 {
			t.Fatalf("relayed %q", got)
		}
	}
	// Cached tokens never exceed the prompt's.
	m := sseMeter(false)
	m.feed([]byte(`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":9}}}` + "\n"))
	if p, _, k, _ := m.result(200); p != 5 || k != 5 {
		t.Fatalf("prompt %d cached %d", p, k)
	}
}

func jsonMeter(doc string) *meter {
	m := &meter{promptChars: 8}
	var h fasthttp.ResponseHeader
	h.SetContentType("application/json")
	m.start(&h)
	m.feed([]byte(doc))
	return m
}

// Every OpenAI shape and TGI's native answers are read exactly.
func TestMeterJSONShapes(t *testing.T) {
	for _, tt := range []struct {
		name, doc  string
		p, c, k    int64
		estimated  bool
		httpStatus int
	}{
		{"chat", `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":3}}}`, 9, 2, 3, false, 200},
		{"completions", `{"choices":[{"text":"hi"}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`, 4, 1, 0, false, 200},
		{"embeddings", `{"data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":6,"total_tokens":6}}`, 6, 0, 0, false, 200},
		{"responses", `{"output":[{"content":[{"text":"hi"}]}],"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":5,"total_tokens":12}}`, 7, 5, 2, false, 200},
		{"tgi generate with prefill", `{"generated_text":"abc","details":{"finish_reason":"length","generated_tokens":3,"prefill":[{"id":1},{"id":2}]}}`, 2, 3, 0, false, 200},
		{"tgi generate without prefill", `{"generated_text":"abc","details":{"finish_reason":"length","generated_tokens":3}}`, 2, 3, 0, true, 200},
		{"tgi list", `[{"generated_text":"a","details":{"generated_tokens":3,"prefill":[{"id":1}]}},{"generated_text":"b","details":{"generated_tokens":4,"prefill":[{"id":1}]}}]`, 2, 7, 0, false, 200},
		{"no usage", `{"choices":[{"message":{"content":"abcdefghi"}}]}`, 2, 3, 0, true, 200},
		{"upstream error", `{"error":{"message":"bad"}}`, 0, 0, 0, false, 400},
		{"not JSON", `{"choices":`, 2, 0, 0, true, 200},
	} {
		m := jsonMeter(tt.doc)
		p, c, k, est := m.result(tt.httpStatus)
		if p != tt.p || c != tt.c || k != tt.k || est != tt.estimated {
			t.Errorf("%s: %d/%d/%d est %v, want %d/%d/%d est %v", tt.name, p, c, k, est, tt.p, tt.c, tt.k, tt.estimated)
		}
	}
}

// A JSON answer past maxMeterDoc is read from its tail; a "usage" inside
// generated text (its quotes escaped) is not taken for the real one.
func TestMeterLargeJSON(t *testing.T) {
	pad := strings.Repeat("0.123456,", maxMeterDoc/8)
	doc := `{"data":[{"embedding":[` + pad + `0]}],"note":"\"usage\":{\"prompt_tokens\":999}","usage":{"prompt_tokens":42,"total_tokens":42}}`
	m := &meter{}
	var h fasthttp.ResponseHeader
	h.SetContentType("application/json")
	m.start(&h)
	for off := 0; off < len(doc); off += 3000 {
		m.feed([]byte(doc[off:min(off+3000, len(doc))]))
	}
	if len(m.doc) > maxMeterTail {
		t.Fatalf("kept %d bytes", len(m.doc))
	}
	if p, c, _, est := m.result(200); p != 42 || c != 0 || est {
		t.Fatalf("%d/%d est %v", p, c, est)
	}
	forged := `{"data":[` + pad + `0],"text":"\"usage\":{\"prompt_tokens\":999,\"completion_tokens\":1}"}`
	m = &meter{}
	m.start(&h)
	m.feed([]byte(forged))
	if _, _, _, est := m.result(200); !est {
		t.Fatal("a usage forged inside a string was taken")
	}
}

// The body is rewritten to ask for usage only where that is exact; what
// else the client's stream_options held is kept.
func TestAskUsage(t *testing.T) {
	for _, tt := range []struct {
		in, out string
		state   int
	}{
		{`{"model":"m","stream":true}`, `{"stream_options":{"include_usage":true},"model":"m","stream":true}`, usageAdded},
		{` {"stream":true}`, ` {"stream_options":{"include_usage":true},"stream":true}`, usageAdded},
		{`{"stream":true,"stream_options":{"continuous_usage_stats":false}}`, `{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false}}`, usageAdded},
		{`{"stream":true,"stream_options":{}}`, `{"stream":true,"stream_options":{"include_usage":true}}`, usageAdded},
		{`{"stream":true,"stream_options":{ }}`, `{"stream":true,"stream_options":{"include_usage":true }}`, usageAdded},
		{`{"stream":true,"stream_options":null}`, `{"stream":true,"stream_options":{"include_usage":true}}`, usageAdded},
		{`{"stream":true,"stream_options":{"include_usage":false,"x":1}}`, `{"stream":true,"stream_options":{"include_usage":true,"x":1}}`, usageAdded},
		{`{"stream":true,"stream_options":{"include_usage" : null}}`, `{"stream":true,"stream_options":{"include_usage" : true}}`, usageAdded},
		{`{"stream":true,"stream_options":{"include_usage":true}}`, "", usageAsked},
		// Ambiguous: forwarded as it came.
		{`{"stream":true,"stream_options":{},"stream_options":{}}`, "", usageUnread},
		{`{"stream":true,"Stream_Options":{}}`, "", usageUnread},
		{`{"stream":true,"stream_options":"yes"}`, "", usageUnread},
		{`{"stream":true,"stream_options":[]}`, "", usageUnread},
		{`{"stream":true,"stream_options":{"include_usage":1}}`, "", usageUnread},
		{`{"stream":true,"stream_options":{"include_usage":false,"INCLUDE_USAGE":false}}`, "", usageUnread},
		{`{"stream":true,"stream_options":{"include\u005fusage":false}}`, "", usageUnread},
		{`{"stream":true,"stream\u005foptions":{}}`, "", usageUnread},
		{`{"stream":true,"stream":true}`, "", usageUnread},
		{`{"Stream":true}`, "", usageUnread},
		{`{"stream":false}`, "", usageUnread},
		{`[{"stream":true}]`, "", usageUnread},
	} {
		var model []byte
		got, state := askUsage([]byte(tt.in), true, &model)
		want := tt.out
		if want == "" {
			want = tt.in
		}
		if state != tt.state || string(got) != want {
			t.Errorf("%s: %s (state %d), want %s (state %d)", tt.in, got, state, want, tt.state)
		}
	}
	var model []byte
	if _, state := askUsage([]byte(`{"model":"a\u00e9b","stream":true}`), false, &model); state != usageUnread || string(model) != "aéb" {
		t.Fatalf("model %q state %d", model, state)
	}
}

// Streamed completions and TGI's /generate_stream are read too.
func TestMeterOtherStreams(t *testing.T) {
	completions := `data: {"id":"x","object":"text_completion","choices":[{"index":0,"text":"Hello","finish_reason":null}]}` + "\n\n" +
		`data: {"id":"x","object":"text_completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}` + "\n\n" + sseDoneLine
	m := sseMeter(true)
	got := runStrip(m, []byte(completions))
	if want := completions[:strings.Index(completions, "data: {\"id\":\"x\",\"object\":\"text_completion\",\"choices\":[]")] + sseDoneLine; string(got) != want {
		t.Fatalf("client got %q", got)
	}
	if p, c, _, est := m.result(200); p != 3 || c != 1 || est {
		t.Fatalf("completions: %d/%d est %v", p, c, est)
	}
	tgi := `data:{"index":1,"token":{"id":1,"text":"Hel","logprob":-0.1,"special":false},"generated_text":null,"details":null}` + "\n\n" +
		`data:{"index":2,"token":{"id":2,"text":"lo","logprob":-0.1,"special":false},"generated_text":"Hello","details":{"finish_reason":"length","generated_tokens":2,"seed":null,"input_length":6}}` + "\n\n"
	m = sseMeter(false)
	m.feed([]byte(tgi))
	if p, c, _, est := m.result(200); p != 6 || c != 2 || est {
		t.Fatalf("tgi: %d/%d est %v", p, c, est)
	}
	// Cut before its details: the tokens' text is the estimate.
	m = sseMeter(false)
	m.feed([]byte(tgi[:strings.Index(tgi, "\n\n")+2]))
	if p, c, _, est := m.result(200); p != 10 || c != 1 || !est {
		t.Fatalf("tgi cut: %d/%d est %v", p, c, est)
	}
}
