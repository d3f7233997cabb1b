package proxy

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The fast reading of a body (prompt_fast.go) against the full one, which
// stays the reference: on every input both give the same characters,
// stream, error (the same one: not JSON or a field of the wrong type), max
// tokens reading and model bytes, whatever each was given to read.

// bodyReading is everything one reading of a body gives.
type bodyReading struct {
	chars  int
	stream bool
	err    error
	mt     maxTokens
	model  []byte
	isNil  bool // model is nil
}

func (r bodyReading) String() string {
	return fmt.Sprintf("chars %d stream %v err %v mt %+v model %q (nil %v)", r.chars, r.stream, r.err, r.mt, r.model, r.isNil)
}

func (r bodyReading) same(o bodyReading) bool {
	return r.chars == o.chars && r.stream == o.stream && r.err == o.err && r.mt == o.mt &&
		bytes.Equal(r.model, o.model) && r.isNil == o.isNil
}

// readBodyWith reads body with parse, given max tokens and a model to read
// into or not, starting from what the caller had in them.
func readBodyWith(parse func([]byte, *maxTokens, *[]byte) (int, bool, error), body []byte, withMT, withModel bool, mt0 maxTokens, model0 []byte) bodyReading {
	var r bodyReading
	r.mt, r.model = mt0, model0
	var mt *maxTokens
	if withMT {
		mt = &r.mt
	}
	var model *[]byte
	if withModel {
		model = &r.model
	}
	// A copy: a reading must not write into the body.
	b := bytes.Clone(body)
	r.chars, r.stream, r.err = parse(b, mt, model)
	if !bytes.Equal(b, body) {
		r.err = fmt.Errorf("the body was changed to %q", b)
	}
	r.isNil = r.model == nil
	return r
}

// readingStarts are what a caller may hold in max tokens and the model
// before a reading: nothing, or an earlier reading's.
var readingStarts = []struct {
	mt    maxTokens
	model []byte
}{
	{},
	{maxTokens{n: 7, named: true, seen: [3]uint8{0, 1, 0}}, []byte("before")},
}

// compareBodyReadings fails t where parseBodyModel (fast, else full)
// reads body otherwise than parseBodyFull does, in every way it is asked
// to read one (with all, only with max tokens and a model read from
// nothing); it reports whether the fast reading read it.
func compareBodyReadings(t *testing.T, body []byte, all bool) (fast bool) {
	t.Helper()
	starts := readingStarts
	flags := []bool{false, true}
	if !all {
		starts, flags = starts[:1], flags[1:]
	}
	for _, withMT := range flags {
		for _, withModel := range flags {
			for _, s := range starts {
				want := readBodyWith(parseBodyFull, body, withMT, withModel, s.mt, s.model)
				got := readBodyWith(parseBodyModel, body, withMT, withModel, s.mt, s.model)
				if !got.same(want) {
					t.Fatalf("%q (max tokens %v, model %v, from %+v %q):\n got  %v\n want %v", body, withMT, withModel, s.mt, s.model, got, want)
				}
			}
		}
	}
	var mt maxTokens
	var model []byte
	_, _, fast = parseBodyFast(body, &mt, &model)
	return fast
}

// tricky bodies: where the two readings could part.
var bodyFastCases = []string{
	// strings: escapes, \u escapes, surrogates paired, unpaired and lone,
	// invalid UTF-8 around escapes, control characters
	`{"prompt":"a\nb\"c\\d\/e\bf\fg\rh\ti"}`,
	`{"prompt":"\u00e9\u4e2d\uD83D\uDE00\ud83d\ude00x"}`,
	`{"prompt":"\uD83D"}`, `{"prompt":"\uD83Dx"}`, `{"prompt":"\uD83D\n"}`, `{"prompt":"\uDE00\uD83D"}`,
	`{"prompt":"\uD83D\u0041"}`, `{"prompt":"\uD83D\uD83D\uDE00"}`, `{"prompt":"\uD83D\u"}`, `{"prompt":"\uD83D\u12"}`,
	`{"prompt":"\u12"}`, `{"prompt":"\u12G4"}`, `{"prompt":"\x"}`, `{"prompt":"\`, `{"prompt":"\"`, `{"prompt":"abc`,
	"{\"prompt\":\"\xe2\x82\\n\xac\"}", "{\"prompt\":\"\xc3\\u00a9\xa9\"}", "{\"prompt\":\"\xff\xfe\"}",
	"{\"prompt\":\"a\x01b\"}", "{\"prompt\":\"a\x1fb\"}", "{\"prompt\":\"a\x7fb\"}", "{\"pro\x01mpt\":\"x\"}",
	"{\"prompt\":\"0123456789abcdef\x00\"}", "{\"prompt\":\"0123\x01456789abcdef\"}", "{\"x\":\"0123\x1f456789abcdef\"}",
	"{\"prompt\":\"0123\n456789abcdef\"}", "{\"x\":\"01\\\\23\t456789abcdef\"}", "{\"x\":\"0123456789\x10abcdef\"}", `{"prompt":"0123456789abcdef\"0123456789"}`,
	"{\"prompt\":\"0123456\xc3\xa9789abcdef\\n0123\xe4\xb8\xad456789\"}",
	// keys: escapes, letter case, Unicode folding
	`{"pr\u006fmpt":"abc"}`, `{"str\u0065am":true}`, `{"mod\u0065l":"m"}`, `{"PROMPT":"ab","Prompt":"c"}`,
	`{"messages":[{"ſource":{"type":"base64","data":"AAAA"}}]}`, `{"messages":[{"SOURCE":{"TYPE":"url","data":"AAAA"}}]}`,
	`{"messages":[{"source":{"type":"b\u0061se64","data":"AAAA"}}]}`, `{"messages":[{"source":{"typ\u0065":"base64","data":"AA"}}]}`,
	`{"messages":[{"source":{"type":"file","type":"url","data":"AA"}}]}`, `{"messages":[{"source":{"type":1,"data":"AA"}}]}`,
	`{"messages":[{"source":"text source"}]}`, `{"messages":[{"source":["a",{"type":"url"}]}]}`,
	`{"messages":[{"source":{}}]}`, `{"messages":[{"source":{"data":"abc"}}]}`,
	`{"messages":[{"role":"user","content":"x","image_url":{"url":"u"},"ID":"i","Arguments":{"a":[1,true,null,false,"x"]}}]}`,
	`{"messages":[{"arguments":"{\"a\":1}","input":{"k":"v"},"args":[{"x":1}],"parameters":{},"input_schema":{"type":"object"}}]}`,
	`{"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}}],"functions":[],"chat_template_kwargs":{}}`,
	`{"tools":["é",1,true,false,null,[],{},{"k":"v","k":"w"}]}`,
	`{"thisisaverylongkeyofmorethan32bytes_prompt":"x","prompt":"y"}`,
	// stream
	`{"stream":true}`, `{"STREAM":true,"stream":false}`, `{"stream":"true"}`, `{"stream":1}`, `{"stream":null}`,
	`{"stream":tru}`, `{"stream":[]}`, `{"Stream":{}}`, `{"stream":true,"stream":0}`, `{"streams":true}`,
	`{"prompt":"x","stream":"yes","bad":nul}`,
	// model
	`{"model":"m"}`, `{"model":""}`, `{"model":"a","model":"b"}`, `{"model":"a","model":1}`, `{"Model":"x"}`,
	`{"model":"a\"b"}`, `{"model":"é\u00e9"}`, `{"model":"` + strings.Repeat("m", 300) + `"}`,
	`{"prompt":"mock","model":"mo"}`, `{"model":null}`, `{"model":{"name":"x"}}`,
	// max tokens
	`{"max_tokens":16}`, `{"max_tokens":0}`, `{"max_tokens":-0}`, `{"max_tokens":-1}`, `{"max_tokens":1.0}`,
	`{"max_tokens":1e3}`, `{"max_tokens":1E+3}`, `{"max_tokens":-0.0}`, `{"max_tokens":1073741824}`,
	`{"max_tokens":1073741825}`, `{"max_tokens":9999999999}`, `{"max_tokens":12345678901}`,
	`{"max_tokens":1234567890123456789012}`, `{"max_tokens":"5"}`, `{"max_tokens":true}`, `{"max_tokens":[1]}`,
	`{"max_tokens":null,"MAX_TOKENS":3}`, `{"max_tokens":5,"max_completion_tokens":9,"max_output_tokens":2}`,
	`{"max_tokens":01}`, `{"max_tokens":-}`, `{"max_tokens":1.}`, `{"max_tokens":.5}`, `{"max_tokens":+1}`,
	`{"max_tokens":5,"max_tokens":5}`,
	// numbers and literals elsewhere
	`{"prompt":[1,-2,3.5,4e-7,0,-0.0E+1]}`, `{"x":NaN}`, `{"x":Infinity}`, `{"x":-inf}`, `{"x":01}`, `{"x":1.}`,
	`{"x":-}`, `{"x":1e}`, `{"x":truex}`, `{"x":nul}`, `{"x":true false}`,
	// layout
	` { "prompt" : "a" , "stream" : true } `, "\t\r\n{}\n", `{}`, `{ }`, `{,}`, `{"a":1,}`, `{"a" 1}`, `{"a":}`,
	`{"a":1}}`, `{"a":1} {"b":2}`, `{"a":1`, `{`, `}`, ``, ` `, `null`, ` null `, `true`, `"x"`, `1`, `[]`,
	`[{"stream":true}]`, "\v{}", "{}\x00", "\xef\xbb\xbf{}", `{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`,
	`{'a':1}`, `{a:1}`, `{"a":1,"b"}`, "{\"a\"\n:\n1\n}",
}

// nested is a body nesting depth arrays or objects in a prompt field.
func nested(depth int, open, close string) string {
	return `{"prompt":` + strings.Repeat(open, depth-1) + `"x"` + strings.Repeat(close, depth-1) + `}`
}

// testBodies is every body the package's tests hold: the string literals
// of its test files (a template's %s filled in a few ways), the fuzz
// corpora in testdata, the seeds and the tricky cases above.
func testBodies(t *testing.T) [][]byte {
	t.Helper()
	var out [][]byte
	add := func(s string) { out = append(out, []byte(s)) }
	for _, s := range bodyFastCases {
		add(s)
	}
	for _, s := range bodySeeds {
		add(s)
	}
	add(benchLongChat)
	for _, d := range []int{2, 150, 199, 200, 201, 202, 299, 300, 301, 302} {
		add(nested(d, "[", "]"))
		add(nested(d, `{"a":`, "}"))
		add(nested(d, `{"content":[`, "]}"))
	}
	files, err := filepath.Glob("*_test.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("test files: %v", err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			add(s)
			if strings.Contains(s, "%s") {
				for _, v := range []string{`"x"`, `"h\u00e9 \n"`, `[1,"a",{"k":"v"}]`, `{"type":"url"}`, `null`} {
					add(strings.ReplaceAll(s, "%s", v))
				}
			}
			return true
		})
	}
	corpora, _ := filepath.Glob("testdata/fuzz/*/*")
	for _, f := range corpora {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			_, lit, ok := strings.Cut(line, "(")
			if !ok {
				continue
			}
			if s, err := strconv.Unquote(strings.TrimSuffix(lit, ")")); err == nil {
				add(s)
			}
		}
	}
	return out
}

// TestBodyFastSame compares the two readings on every body of the tests,
// and on every prefix of the shorter ones (the errors the fast reading
// hands on).
func TestBodyFastSame(t *testing.T) {
	bodies := testBodies(t)
	fast := 0
	for _, b := range bodies {
		if compareBodyReadings(t, b, true) {
			fast++
			if len(b) <= 400 {
				for i := range len(b) {
					compareBodyReadings(t, b[:i], false)
				}
			}
		}
	}
	t.Logf("%d bodies, %d read fast", len(bodies), fast)
	// The fast reading is what the edge's requests take.
	for _, b := range []string{benchLongChat, bodySeeds[0],
		`{"model":"mock-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`,
		`{"model":"m","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"\u00e9\n"}]}],"tools":[{"type":"function"}]}`,
	} {
		var mt maxTokens
		var model []byte
		if _, _, ok := parseBodyFast([]byte(b), &mt, &model); !ok {
			t.Errorf("%s: not read fast", b)
		}
	}
}

// FuzzBodyFast compares the two readings on arbitrary bodies.
func FuzzBodyFast(f *testing.F) {
	for _, s := range bodyFastCases {
		f.Add([]byte(s))
	}
	for _, s := range bodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		compareBodyReadings(t, body, true)
	})
}
