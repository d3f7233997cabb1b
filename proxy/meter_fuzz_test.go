package proxy

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

// FuzzAskUsage: whatever the body, a rewrite leaves valid JSON that Go's
// decoder (last key wins) reads as the client's body with
// stream_options.include_usage true and nothing else changed; a body it
// does not rewrite comes back as it was.
func FuzzAskUsage(f *testing.F) {
	for _, s := range []string{`{"stream":true}`, `{"stream":true,"stream_options":{"x":1}}`,
		`{"stream":true,"stream_options":{"include_usage":false}}`, `{"stream":true,"stream_options":null}`,
		`{"stream":true,"stream_options":{"include_usage":true}}`, `{"stream":true,"stream_options":{},"stream_options":{}}`,
		` { "stream" : true , "model" : "m" } `, `{}`, `[]`, `{"stream":true,"a":"\"}"}`,
		`{"model":"a","model":"b","Model":"c","m":{"model":"d"}}`, `{"model":1,"model":"x"}`, `{"model":"x","model":null}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if fastjson.Validate(body) != nil {
			return // askUsage is only given bodies parseBody accepted
		}
		if !strings.Contains(body, `\`) { // the model parseBody reads, as askUsage reads it
			var got, want []byte
			if _, _, err := parseBodyModel([]byte(body), nil, &got); err == nil {
				askUsage([]byte(body), false, &want)
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: model %q read with the body, %q by askUsage", body, got, want)
				}
			}
		}
		var model []byte
		out, state := askUsage([]byte(body), true, &model)
		if state != usageAdded {
			if string(out) != body {
				t.Fatalf("%s: not rewritten, but changed to %s", body, out)
			}
			return
		}
		var before, after map[string]any
		if err := json.Unmarshal([]byte(body), &before); err != nil {
			return // not an object Go reads: no claim
		}
		if err := json.Unmarshal(out, &after); err != nil {
			t.Fatalf("%s rewritten to invalid %s: %v", body, out, err)
		}
		so, _ := after["stream_options"].(map[string]any)
		if so == nil || so["include_usage"] != true {
			t.Fatalf("%s rewritten to %s: no include_usage", body, out)
		}
		delete(so, "include_usage")
		if orig, _ := before["stream_options"].(map[string]any); orig != nil {
			delete(orig, "include_usage")
			if !reflect.DeepEqual(orig, so) {
				t.Fatalf("%s: stream_options became %v", body, so)
			}
		} else if len(so) != 0 {
			t.Fatalf("%s: stream_options became %v", body, so)
		}
		delete(before, "stream_options")
		delete(after, "stream_options")
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("%s rewritten to %s: other members changed", body, out)
		}
	})
}

// FuzzMeterScan: any stream, split anywhere, never grows the carry past its
// bound, and in strip mode a stream without a usage-only chunk is relayed
// byte for byte; counts are never negative or absurd.
func FuzzMeterScan(f *testing.F) {
	f.Add([]byte(chatStreamAll), 10)
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1}}\r\n\r\n"), 3)
	f.Add([]byte("data:{\n\ndata: [DONE]"), 1)
	f.Fuzz(func(t *testing.T, stream []byte, split int) {
		if split < 0 || split > len(stream) {
			split = len(stream) / 2
		}
		m := sseMeter(true)
		got := runStrip(m, stream[:split], stream[split:])
		if cap(m.carry) > maxMeterLine+len(stream)+64 && cap(m.carry) > 2*maxMeterLine {
			t.Fatalf("carry %d", cap(m.carry))
		}
		if !bytes.Contains(stream, []byte(`"usage"`)) && !bytes.Equal(got, stream) {
			t.Fatalf("%q relayed as %q", stream, got)
		}
		p, c, k, _ := m.result(200)
		if p < 0 || c < 0 || k < 0 || p > maxReportedTokens || c > maxReportedTokens || k > p {
			t.Fatalf("counts %d/%d/%d", p, c, k)
		}
	})
}

// FuzzMeterFast: whatever the bytes, the fast reading of a chunk or of a
// whole answer (meter_fast.go) either gives up or finds exactly what the
// full reading finds, and it never reads what fastjson refuses.
func FuzzMeterFast(f *testing.F) {
	f.Add([]byte(benchAnswer))
	for _, c := range benchChunks {
		f.Add(bytes.TrimSpace(bytes.TrimPrefix(c, []byte("data: "))))
	}
	f.Add(bytes.TrimSpace(bytes.TrimPrefix([]byte(benchUsageChunk), []byte("data: "))))
	for _, s := range []string{`{"choices":[{"text":"a\nb\"c","delta":{"content":"é\t","reasoning_content":"x"}}],"usage":{"prompt_tokens":1}}`,
		`{"choices":[{"message":{"content":"\u00e9"}}]}`, `{"choices":[1,[],{"text":"ab","text":"abc"}],"choices":[]}`,
		`{"usage":null,"usage":{"prompt_tokens":2,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":9}}}`,
		`{"choices":[],"usage":{"prompt_tokens":-1}}`, `{"us\u0061ge":{"prompt_tokens":1}}`, ` {"choices" : [ ] } `,
		`{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}`, `{"a":[1e5,-0.5,true,false,null]}`,
		`{"a":01}`, `{"a":1,}`, `{"usage":{"prompt_tokens":1.0,"completion_tokens":3,"input_tokens_details":{"cached_tokens":1}}}`,
		`{"usage":{"input_tokens":5,"output_tokens":null,"prompt_tokens_details":[1],"prompt_tokens_details":{"cached_tokens":2}}}`,
		`{"usage":{"prompt_tokens":2000000000,"completion_tokens":"3"}}`, `{"choices":[{"message":"x","message":{"content":"y"}}]}`, `[]`, `{"a":"\x01"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p fastjson.Parser
		_, perr := p.ParseBytes(b)
		for _, msg := range []string{"delta", "message"} {
			if _, ok := fastRead(b, msg); ok && perr != nil {
				t.Fatalf("%q: read fast, but fastjson refuses it: %v", b, perr)
			}
		}
		var fast, full meter
		if usageOnly, ok := fast.fastChunk(b); ok {
			v, _ := full.parser.ParseBytes(b)
			if want := full.chunk(v); usageOnly != want {
				t.Fatalf("%q: usage-only %v, the full reading says %v", b, usageOnly, want)
			}
			if got, want := meterCounts(&fast), meterCounts(&full); got != want {
				t.Fatalf("%q as a chunk: fast %+v, full %+v", b, got, want)
			}
		}
		fast, full = meter{mode: meterJSON, doc: b}, meter{mode: meterJSON, doc: b}
		if fast.fastDoc() {
			full.finishDocFull()
			if got, want := meterCounts(&fast), meterCounts(&full); got != want {
				t.Fatalf("%q as an answer: fast %+v, full %+v", b, got, want)
			}
		}
	})
}

// The fast reading reads what bench upstream answers: no fallback there.
func TestMeterFastReadsOpenAIShapes(t *testing.T) {
	if _, ok := fastRead([]byte(benchAnswer), "message"); !ok {
		t.Error("answer not read fast")
	}
	for _, c := range append(benchChunks, []byte(benchUsageChunk)) {
		if _, ok := fastRead(bytes.TrimSpace(bytes.TrimPrefix(c, []byte("data: "))), "delta"); !ok {
			t.Errorf("%s not read fast", c)
		}
	}
}

type counts struct {
	prompt, completion, cached int64
	promptExact, complExact    bool
	invalid                    bool
	relayedChars               int
}

func meterCounts(m *meter) counts {
	return counts{m.prompt, m.completion, m.cached, m.promptExact, m.complExact, m.invalid, m.relayedChars}
}

// FuzzMeterShape: a chunk read as the last one's shape with another
// string (sameShape) reads as the full reading reads it.
func FuzzMeterShape(f *testing.F) {
	chunk := func(c []byte) []byte { return bytes.TrimSpace(bytes.TrimPrefix(c, []byte("data: "))) }
	f.Add(chunk(benchChunks[1]), chunk(benchChunks[2]))
	f.Add(chunk(benchChunks[6]), chunk(benchChunks[7]))
	f.Add([]byte(`{"choices":[{"text":"ab","delta":{"content":"x"}}]}`), []byte(`{"choices":[{"text":"ab","delta":{"content":"y\n\"z"}}]}`))
	f.Add([]byte(`{"choices":[{"delta":{"content":"x"}}]}`), []byte(`{"choices":[{"delta":{"content":"x","content":"y"}}]}`))
	f.Add([]byte(`{"choices":[{"delta":{"content":"x"}}]}`), []byte(`{"choices":[{"delta":{"content":"\u00e9"}}]}`))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var fast, full meter
		for _, c := range [][]byte{a, b} {
			gotOnly, ok := fast.fastChunk(c)
			if !ok {
				// Read in full, as line does: both meters the same way.
				if v, err := fast.parser.ParseBytes(c); err == nil {
					gotOnly = fast.chunk(v)
				}
			}
			var wantOnly bool
			if v, err := full.parser.ParseBytes(c); err == nil {
				wantOnly = full.chunk(v)
			}
			if gotOnly != wantOnly {
				t.Fatalf("%q after %q: usage-only %v, the full reading says %v", c, a, gotOnly, wantOnly)
			}
			if got, want := meterCounts(&fast), meterCounts(&full); got != want {
				t.Fatalf("%q after %q: fast %+v, full %+v", c, a, got, want)
			}
		}
	})
}
