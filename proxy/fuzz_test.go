package proxy

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/url"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// FuzzCredential: any header bytes give at most one credential, taken from
// what the client sent, never a panic; two different values of one header
// are never let through.
func FuzzCredential(f *testing.F) {
	f.Add("km_abc", "Bearer xyz", "")
	f.Add("", "bearer   km_spaced  ", "")
	f.Add("", "Basic Zm9vOmJhcg==", "Bearer x")
	f.Add(" ", "Bearer", "")
	f.Add("a", "Bearer a", "Bearer b")
	f.Fuzz(func(t *testing.T, apiKey, auth, auth2 string) {
		var h fasthttp.RequestHeader
		h.Set("X-API-Key", apiKey)
		h.Set("Authorization", auth)
		if auth2 != "" {
			h.Add("Authorization", auth2)
		}
		cred, fromAuth, ok := credential(&h)
		vals := h.PeekAll("Authorization")
		if ok && len(vals) == 2 && !bytes.Equal(bytes.TrimSpace(vals[0]), bytes.TrimSpace(vals[1])) {
			t.Fatalf("two different Authorization values %q accepted", vals)
		}
		if len(cred) == 0 {
			return
		}
		src := h.Peek("X-API-Key")
		if fromAuth {
			src = bytes.Join(vals, nil)
		}
		if !bytes.Contains(src, cred) {
			t.Fatalf("credential %q is not from the header it names", cred)
		}
	})
}

// FuzzParseBody: prompt counting never panics, never counts a negative or
// impossible number of characters, and is never more lenient than Go's own
// JSON decoder reading the same table (last key wins, exact keys): whatever
// encoding/json accepts, parseBody accepts too, with at least as many
// prompt characters, and streaming whenever it streams.
func FuzzParseBody(f *testing.F) {
	for _, s := range bodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, stream, err := parseBody(body)
		if err == nil && (n < 0 || n > len(body)) {
			t.Fatalf("counted %d characters in a %d-byte body", n, len(body))
		}
		ref, refErr := referenceJSON(body)
		if refErr != nil || nesting(body) > fastjson.MaxDepth {
			return
		}
		if err != nil {
			t.Fatalf("encoding/json accepts %q, parseBody refuses it: %v", body, err)
		}
		if n < ref.chars || (ref.stream && !stream) {
			t.Fatalf("%q: parseBody sees %d chars, stream %v; encoding/json %d, %v", body, n, stream, ref.chars, ref.stream)
		}
	})
}

var bodySeeds = []string{
	`{"model":"m","messages":[{"role":"user","content":"Hello!"}],"stream":true}`,
	`{"prompt":["a","b"],"input":[[1,2]]}`,
	`{"messages":[{"content":[{"type":"text","text":"x"}]}]}`,
	`{"Stream":true,"stream":false,"PROMPT":"ab\u00e9"}`,
	`{"inputs":"tgi prompt","parameters":{"max_new_tokens":5}}`,
	`{"model":"m","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]},{"type":"function_call_output","call_id":"c","output":"result"}],"instructions":"be brief"}`,
	`{"system":[{"type":"text","text":"sys"}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"out"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]}]}`,
	`{"prompt":"p","suffix":"s","tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"}}}]}`,
	`{"messages":[{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}]}`,
	`{"query":"q","documents":["d1",{"text":"d2"}],"text_1":"a","text_2":["b"]}`,
	`{"prompt":[1,2,3,4],"stream":null}`,
}

// nesting is an upper bound of how deeply body nests arrays and objects.
func nesting(body []byte) int {
	depth, most := 0, 0
	for _, c := range body {
		switch c {
		case '[', '{':
			depth++
			most = max(most, depth)
		case ']', '}':
			depth--
		}
	}
	return most
}

// upstreamReading is what a reference upstream reads from a body.
type upstreamReading struct {
	chars  int
	stream bool
}

// referenceJSON reads a JSON body with encoding/json, as a Python or Go
// upstream would: duplicate keys, last one wins; "stream" true also for
// the values pydantic coerces to true ("true", "yes", 1, ...).
func referenceJSON(raw []byte) (upstreamReading, error) {
	var v any
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return upstreamReading{}, err
	}
	if _, err := d.Token(); err != io.EOF {
		return upstreamReading{}, errBodyNotJSON // trailing data
	}
	o, ok := v.(map[string]any)
	if !ok {
		if v == nil {
			return upstreamReading{}, nil
		}
		return upstreamReading{}, errBodyShape // a string, a list: no request an upstream serves
	}
	var r upstreamReading
	for k, val := range o {
		if strings.EqualFold(k, "stream") {
			switch val.(type) {
			case bool, nil:
			default:
				// docs/api.md: a stream field (any letter case) that is
				// not a boolean or null is refused, as pydantic's lax
				// reading of "1" or "yes" cannot be matched exactly.
				return upstreamReading{}, errBodyShape
			}
		}
		if k == "stream" {
			r.stream = laxTrue(val)
			continue
		}
		switch promptFields[strings.ToLower(k)] {
		case textField:
			r.chars += refText(val)
		case jsonField:
			r.chars += refJSON(val)
		}
	}
	return r, nil
}

// laxTrue is pydantic's lax bool: true, 1, and the strings it reads as true.
func laxTrue(v any) bool {
	switch x := v.(type) {
	case bool:
		return x
	case json.Number:
		return x.String() == "1" || x.String() == "1.0"
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "1", "on", "t", "true", "y", "yes":
			return true
		}
	}
	return false
}

// refText and refJSON are the counting table written again over
// encoding/json's values: the fuzz targets hold the fast, allocation-free
// parser to them.
func refText(v any) int {
	switch x := v.(type) {
	case string:
		return utf8.RuneCountInString(x)
	case json.Number:
		return 1
	case []any:
		n := 0
		for _, it := range x {
			n += refText(it)
		}
		return n
	case map[string]any:
		n := 0
		for k, val := range x {
			lk := strings.ToLower(k)
			switch _, m := val.(map[string]any); {
			case skipKeys[lk], mediaKeys[lk]:
			case lk == "source":
				if s, ok := val.(map[string]any); ok {
					if t, _ := s["type"].(string); t == "base64" || t == "url" || t == "file" {
						continue
					}
				}
				n += refText(val)
			case m && jsonValueKeys[lk]:
				n += refJSON(val)
			default:
				n += refText(val)
			}
		}
		return n
	}
	return 0
}

func refJSON(v any) int {
	switch x := v.(type) {
	case string:
		return utf8.RuneCountInString(x) + 2
	case json.Number:
		return 1
	case bool:
		if x {
			return 4
		}
		return 5
	case nil:
		return 4
	case []any:
		n := 2 + max(len(x)-1, 0)
		for _, it := range x {
			n += refJSON(it)
		}
		return n
	case map[string]any:
		n := 2 + max(len(x)-1, 0)
		for k, val := range x {
			n += utf8.RuneCountInString(k) + 3 + refJSON(val)
		}
		return n
	}
	return 0
}

// referenceUpstreams reads a forwarded body as lenient upstreams would: its
// Content-Encoding undone; then a form as Go's (or Starlette's) form
// parsers read it — by a server that honours the Content-Type — and, by
// any server, as JSON after Python's detection of its encoding (byte-order
// marks, UTF-16 and UTF-32), whatever the Content-Type says, as many
// servers do. It returns every reading some upstream can make; none when
// the body cannot be decoded at all.
func referenceUpstreams(contentType, contentEncoding string, body []byte) []upstreamReading {
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil
		}
		if body, err = io.ReadAll(zr); err != nil {
			return nil
		}
	case "deflate":
		zr, err := zlib.NewReader(bytes.NewReader(body))
		if err != nil {
			zr = flate.NewReader(bytes.NewReader(body)) // some servers take raw deflate
		}
		if body, err = io.ReadAll(zr); err != nil {
			return nil
		}
	default:
		return nil // br, zstd: the reference cannot read them; the edge must refuse
	}
	var out []upstreamReading
	mt, params, _ := mime.ParseMediaType(contentType)
	switch mt {
	case "multipart/form-data":
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		fields := map[string]string{}
		for {
			p, err := mr.NextPart() // decodes quoted-printable, as some servers do
			if err != nil {
				break
			}
			v, _ := io.ReadAll(p)
			fields[p.FormName()] = string(v) // last wins
		}
		out = append(out, formReading(fields))
	case "application/x-www-form-urlencoded":
		if q, err := url.ParseQuery(string(body)); err == nil {
			fields := map[string]string{}
			for k, v := range q {
				fields[k] = v[len(v)-1]
			}
			out = append(out, formReading(fields))
		}
	}
	if text, ok := pythonDecode(body); ok {
		if r, err := referenceJSON(text); err == nil {
			out = append(out, r)
		}
	}
	return out
}

func formReading(fields map[string]string) (r upstreamReading) {
	for k, v := range fields {
		if k == "stream" {
			r.stream = laxTrue(v)
		} else if promptFields[k] != notPrompt {
			r.chars += utf8.RuneCountInString(v)
		}
	}
	return r
}

// pythonDecode turns bytes into UTF-8 the way Python's json.loads does.
func pythonDecode(b []byte) ([]byte, bool) {
	u16 := func(b []byte, big bool) []byte {
		if len(b)%2 != 0 {
			return nil
		}
		s := make([]uint16, len(b)/2)
		for i := range s {
			if big {
				s[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
			} else {
				s[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
			}
		}
		return []byte(string(utf16.Decode(s)))
	}
	u32 := func(b []byte, big bool) []byte {
		if len(b)%4 != 0 {
			return nil
		}
		var out []rune
		for i := 0; i < len(b); i += 4 {
			if big {
				out = append(out, rune(b[i])<<24|rune(b[i+1])<<16|rune(b[i+2])<<8|rune(b[i+3]))
			} else {
				out = append(out, rune(b[i+3])<<24|rune(b[i+2])<<16|rune(b[i+1])<<8|rune(b[i]))
			}
		}
		return []byte(string(out))
	}
	var out []byte
	switch {
	case bytes.HasPrefix(b, []byte{0, 0, 0xfe, 0xff}):
		out = u32(b[4:], true)
	case bytes.HasPrefix(b, []byte{0xff, 0xfe, 0, 0}):
		out = u32(b[4:], false)
	case bytes.HasPrefix(b, []byte{0xfe, 0xff}):
		out = u16(b[2:], true)
	case bytes.HasPrefix(b, []byte{0xff, 0xfe}):
		out = u16(b[2:], false)
	case bytes.HasPrefix(b, []byte{0xef, 0xbb, 0xbf}):
		out = b[3:]
	case len(b) >= 4 && b[0] == 0 && b[1] == 0:
		out = u32(b, true)
	case len(b) >= 4 && b[0] == 0:
		out = u16(b, true)
	case len(b) >= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0:
		out = u32(b, false)
	case len(b) >= 4 && b[1] == 0:
		out = u16(b, false)
	default:
		out = b
	}
	return out, out != nil && utf8.Valid(out)
}

// FuzzInspectBody is the differential fuzz of body inspection: for random
// bodies, encodings and content types, no reading a reference upstream can
// make of the body the edge would forward (with the headers it would
// forward) streams when the edge's reading does not, or counts more prompt
// characters — or the edge refused the request.
func FuzzInspectBody(f *testing.F) {
	for _, s := range bodySeeds {
		for enc := range uint8(8) {
			f.Add([]byte(s), "application/json", enc)
		}
		f.Add([]byte(s), "text/plain", uint8(0))
		f.Add([]byte(s), "application/octet-stream", uint8(0))
	}
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--b--\r\n"), "multipart/form-data; boundary=b", uint8(0))
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nl=\r\nong\r\n--b--\r\n"), "multipart/form-data; boundary=b", uint8(0))
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name*=utf-8''stream\r\n\r\non\r\n--b--\r\n"), "multipart/form-data; boundary=b", uint8(0))
	f.Add([]byte("model=m&stream=yes&prompt=long+text"), "application/x-www-form-urlencoded", uint8(0))
	f.Add([]byte(`{"stream":true}`), "application/json; charset=utf-16", uint8(0))
	f.Add([]byte(`{"stream":true,"prompt":"long"}`), "application/x-www-form-urlencoded", uint8(0))
	f.Add([]byte(`{"stream":true}`), "multipart/form-data; boundary=b", uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, contentType string, enc uint8) {
		wire, coding := encodeBody(body, enc)
		var h fasthttp.RequestHeader
		h.SetContentType(contentType)
		if coding != "" {
			h.Set(fasthttp.HeaderContentEncoding, coding)
		}
		got, refusal := readBody(&h, wire, 1<<20, true)
		if refusal != nil {
			return
		}
		// What the upstream gets: the forwarded body, and no
		// Content-Encoding if the edge decoded it.
		fwdCoding := coding
		if got.decoded {
			fwdCoding = ""
		}
		if nesting(got.raw) > fastjson.MaxDepth {
			return // fastjson refuses deeper nesting than encoding/json does
		}
		// Every reading an upstream can make (none: it cannot read the
		// body either, so there is nothing to steer).
		for _, ref := range referenceUpstreams(string(h.ContentType()), fwdCoding, got.raw) {
			if ref.stream && !got.stream {
				t.Fatalf("%q (%s, %q): an upstream streams, the edge read no stream", wire, contentType, coding)
			}
			if ref.chars > got.chars {
				t.Fatalf("%q (%s, %q): an upstream reads %d prompt characters, the edge %d", wire, contentType, coding, ref.chars, got.chars)
			}
		}
	})
}

// encodeBody puts a body into one of the shapes clients send: as it is,
// gzip, deflate (zlib), brotli-labelled, with a UTF-8 byte-order mark, as
// UTF-16LE or UTF-32BE, or labelled gzip but not compressed.
func encodeBody(body []byte, enc uint8) (wire []byte, coding string) {
	var b bytes.Buffer
	switch enc % 8 {
	case 1:
		zw := gzip.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		return b.Bytes(), "gzip"
	case 2:
		zw := zlib.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		return b.Bytes(), "deflate"
	case 3:
		return body, "br"
	case 4:
		return append([]byte{0xef, 0xbb, 0xbf}, body...), ""
	case 5:
		for _, u := range utf16.Encode([]rune(string(body))) {
			b.WriteByte(byte(u))
			b.WriteByte(byte(u >> 8))
		}
		return b.Bytes(), ""
	case 6:
		for _, r := range string(body) {
			b.Write([]byte{byte(r >> 24), byte(r >> 16), byte(r >> 8), byte(r)})
		}
		return b.Bytes(), ""
	case 7:
		return body, "gzip"
	}
	return body, ""
}

// promptSlots are request bodies of every API shape the edge counts, each
// with one place (%s, a JSON string) where a server reads prompt text: any
// text put there counts, in full.
var promptSlots = []string{
	`{"model":"m","prompt":%s}`,
	`{"model":"m","prompt":[%s,"b"]}`,
	`{"model":"m","prompt":"p","suffix":%s}`,
	`{"model":"m","messages":[{"role":"user","content":%s}]}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":%s}]}]}`,
	`{"model":"m","messages":[{"role":"user","name":%s,"content":"x"}]}`,
	`{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":%s}}]}]}`,
	`{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f","description":%s,"parameters":{"type":"object"}}}]}`,
	`{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string","description":%s}}}}}]}`,
	`{"model":"m","messages":[],"functions":[{"name":%s}]}`,
	`{"model":"m","input":%s}`,
	`{"model":"m","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":%s}]}]}`,
	`{"model":"m","input":[{"type":"function_call","call_id":"c","name":"f","arguments":%s}]}`,
	`{"model":"m","input":[{"type":"function_call_output","call_id":"c","output":%s}]}`,
	`{"model":"m","input":"hi","instructions":%s}`,
	`{"inputs":%s,"parameters":{"max_new_tokens":4}}`,
	`{"model":"m","system":%s,"messages":[]}`,
	`{"model":"m","system":[{"type":"text","text":%s}],"messages":[]}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":%s}]}]}`,
	`{"model":"m","messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"q":%s}}]}]}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":%s}}]}]}`,
	`{"model":"m","tools":[{"name":"f","description":"d","input_schema":{"type":"object","properties":{"x":{"description":%s}}}}],"messages":[]}`,
	`{"model":"m","query":%s,"documents":["d"]}`,
	`{"model":"m","query":"q","documents":[{"text":%s}]}`,
	`{"model":"m","text_1":"a","text_2":[%s]}`,
	`{"contents":[{"role":"user","parts":[{"text":%s}]}]}`,
	`{"model":"m","messages":[],"chat_template":%s}`,
	`{"model":"m","messages":[],"chat_template_kwargs":{"system_prompt":%s}}`,
}

// FuzzPromptFields is the property of the prompt table: whatever text is
// placed in any field a server turns into prompt tokens counts, every
// character of it.
func FuzzPromptFields(f *testing.F) {
	for i := range promptSlots {
		f.Add("a prompt with \"quotes\", \\ and é", uint8(i))
	}
	f.Add(strings.Repeat("x", 5000), uint8(0))
	f.Fuzz(func(t *testing.T, text string, slot uint8) {
		if !utf8.ValidString(text) {
			return // a JSON string holds text; invalid bytes become U+FFFD
		}
		enc, err := json.Marshal(text)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := promptSlots[int(slot)%len(promptSlots)]
		body := []byte(strings.Replace(tmpl, "%s", string(enc), 1))
		n, _, err := parseBody(body)
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if want := utf8.RuneCountInString(text); n < want {
			t.Fatalf("%s: counted %d characters, the text alone has %d", tmpl, n, want)
		}
	})
}
