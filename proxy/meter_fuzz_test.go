package proxy

import (
	"bytes"
	"encoding/json"
	"reflect"
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
		` { "stream" : true , "model" : "m" } `, `{}`, `[]`, `{"stream":true,"a":"\"}"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if fastjson.Validate(body) != nil {
			return // askUsage is only given bodies parseBody accepted
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
