package proxy

import (
	"bytes"
	"errors"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// Prompt counting. A deployment's max_prompt_chars bounds what an inference
// server turns into prompt tokens, so the edge counts every field that an
// OpenAI-compatible, vLLM, TGI or Anthropic-shaped server (or Gemini's)
// renders into the prompt — on every route, since the edge cannot know how
// an upstream maps its paths. docs/api.md has the table; in short:
//
//   - top-level text fields (promptFields) count the characters (runes) of
//     every string in them, at any depth, and 1 per number (a token id);
//   - within them, keys that name rather than say something (type, role,
//     ids: skipKeys) and media payloads (images, audio, files: mediaKeys)
//     count nothing, and tool-call arguments given as objects count as JSON
//     text;
//   - top-level schema fields (tools, functions, chat_template_kwargs) count
//     as the JSON text they are rendered as: keys, strings, punctuation.
//
// Keys match in any letter case and every occurrence of a repeated key
// counts (as does a "stream": true anywhere among repeats), so that no
// spelling or repetition an upstream might honour lowers the count or hides
// a stream request: the edge never reads less than the upstream does.

// textField and jsonField say how a top-level field counts.
const (
	notPrompt = iota
	textField
	jsonField
)

var promptFields = map[string]int{
	// OpenAI completions, vLLM, Anthropic's legacy /v1/complete, TGI chat
	"prompt": textField, "suffix": textField, "prompt_embeds": textField,
	// embeddings, moderations, the Responses API, vLLM pooling
	"input": textField, "instructions": textField,
	// TGI /generate, /generate_stream, / ; TEI /embed
	"inputs": textField,
	// chat (OpenAI, vLLM, TGI), Anthropic messages, vLLM tokenize
	"messages": textField, "system": textField,
	// rerank and score (vLLM, TEI, Cohere-shaped)
	"query": textField, "documents": textField, "texts": textField, "text": textField,
	"text_1": textField, "text_2": textField,
	// Gemini-shaped
	"contents": textField, "system_instruction": textField, "systeminstruction": textField,
	// templates a server renders (vLLM chat_template; TGI tool_prompt)
	"chat_template": textField, "tool_prompt": textField,
	// schemas rendered into the prompt as JSON
	"tools": jsonField, "functions": jsonField, "chat_template_kwargs": jsonField,
}

// skipKeys name things inside a prompt field without being text of it.
var skipKeys = map[string]bool{
	"type": true, "role": true, "id": true, "call_id": true, "tool_call_id": true, "tool_use_id": true,
	"cache_control": true, "detail": true, "status": true, "index": true, "media_type": true,
	"signature": true, "encrypted_content": true, "mime_type": true, "mimetype": true,
}

// mediaKeys hold images, audio, video and files: no prompt characters.
var mediaKeys = map[string]bool{
	"image_url": true, "image": true, "images": true, "image_data": true, "input_audio": true, "audio": true,
	"video": true, "video_url": true, "file": true, "file_data": true, "file_id": true, "file_url": true,
	"inline_data": true, "inlinedata": true, "file_uri": true, "fileuri": true,
}

// jsonValueKeys are nested values a template renders as JSON when they are
// objects: tool-call arguments and Anthropic tool_use input.
var jsonValueKeys = map[string]bool{"arguments": true, "input": true, "args": true, "parameters": true,
	"input_schema": true}

// lookupFold looks key up in m, whose keys are lower case, ignoring case
// without allocating for keys of up to 32 bytes.
func lookupFold[V any](m map[string]V, key []byte) (V, bool) {
	var buf [32]byte
	if len(key) > len(buf) {
		var zero V
		return zero, false // no field of ours is that long
	}
	lower := buf[:len(key)]
	for i, c := range key {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	v, ok := m[string(lower)]
	return v, ok
}

var (
	keyStream = []byte("stream")

	errBodyNotJSON = errors.New("request body is not valid JSON")
	errBodyShape   = errors.New("request body has a field of the wrong type")
)

// bodyParsers are reused across requests: parsing a body allocates nothing
// once a parser has grown to the bodies it sees.
var bodyParsers fastjson.ParserPool

// parseBody validates a JSON request body (UTF-8, no byte-order mark),
// counts its prompt characters and reports whether it asks to stream. The
// body must be an object (or null); "stream" must be a boolean or null.
func parseBody(raw []byte) (chars int, stream bool, err error) {
	return parseBodyTokens(raw, nil)
}

// parseBodyTokens is parseBody reading, if mt is not nil, the body's
// maximum tokens too (tokens.go) in the same pass.
func parseBodyTokens(raw []byte, mt *maxTokens) (chars int, stream bool, err error) {
	return parseBodyModel(raw, mt, nil)
}

// parseBodyModel is parseBodyTokens recording too, if model is not nil,
// the last top-level "model" member that is a string (as askUsage reads
// it: the key spelled so, cut to maxMeterModel bytes), as a slice of raw.
// It is only asked to for a body without a backslash, in which no key or
// string holds an escape: each string's bytes are then the same decoded
// as written.
//
// The body is read fast (prompt_fast.go) when that reading is sure, else
// in full (parseBodyFull); both read alike.
func parseBodyModel(raw []byte, mt *maxTokens, model *[]byte) (chars int, stream bool, err error) {
	if chars, stream, ok := parseBodyFast(raw, mt, model); ok {
		return chars, stream, nil
	}
	return parseBodyFull(raw, mt, model)
}

// parseBodyFull is parseBodyModel's full reading: fastjson validates the
// body, parses it, and the tree is visited.
func parseBodyFull(raw []byte, mt *maxTokens, model *[]byte) (chars int, stream bool, err error) {
	if err := fastjson.ValidateBytes(raw); err != nil {
		return 0, false, errBodyNotJSON
	}
	p := bodyParsers.Get()
	defer bodyParsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		return 0, false, errBodyNotJSON
	}
	switch v.Type() {
	case fastjson.TypeNull:
		return 0, false, nil
	case fastjson.TypeObject:
	default:
		return 0, false, errBodyShape
	}
	o, _ := v.Object()
	o.Visit(func(key []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		if len(key) == len(keyStream) && bytes.EqualFold(key, keyStream) {
			switch v.Type() {
			case fastjson.TypeTrue:
				stream = true
			case fastjson.TypeFalse, fastjson.TypeNull:
			default:
				err = errBodyShape
			}
			return
		}
		if model != nil && string(key) == "model" && v.Type() == fastjson.TypeString {
			// The parser's copy is given back below: point into raw
			// instead, at the same bytes.
			sb, _ := v.StringBytes()
			if i := bytes.Index(raw, sb); i >= 0 {
				*model = clip(raw[i:i+len(sb)], maxMeterModel)
			}
		}
		if mt != nil {
			if f := maxTokensField(key); f >= 0 {
				mt.json(f, v)
				return
			}
		}
		switch kind, _ := lookupFold(promptFields, key); kind {
		case textField:
			chars += textChars(v)
		case jsonField:
			chars += jsonChars(v)
		}
	})
	if err != nil {
		return 0, false, err
	}
	return chars, stream, nil
}

// textChars counts the prompt characters of a value inside a prompt field:
// the runes of every string, 1 per number (a token id), and of objects the
// members that are text (not skipKeys, mediaKeys or a non-text source).
func textChars(v *fastjson.Value) int {
	switch v.Type() {
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return utf8.RuneCount(s)
	case fastjson.TypeNumber:
		return 1
	case fastjson.TypeArray:
		items, _ := v.Array()
		n := 0
		for _, it := range items {
			n += textChars(it)
		}
		return n
	case fastjson.TypeObject:
		o, _ := v.Object()
		n := 0
		o.Visit(func(key []byte, v *fastjson.Value) {
			switch {
			case has(skipKeys, key), has(mediaKeys, key):
			case bytes.EqualFold(key, []byte("source")):
				n += sourceChars(v)
			case v.Type() == fastjson.TypeObject && has(jsonValueKeys, key):
				n += jsonChars(v)
			default:
				n += textChars(v)
			}
		})
		return n
	}
	return 0
}

func has(m map[string]bool, key []byte) bool {
	_, ok := lookupFold(m, key)
	return ok
}

// sourceChars counts an Anthropic-style content source: a text document
// ({"type": "text", "data": ...}) or one of content blocks counts; base64,
// URL and file sources are media. A source is media only when it is sure
// to be read so: every key spelling "type" in any letter case (a repeated
// key is read last-wins by some parsers, first-wins or case-blind by
// others) holds exactly one of those values; otherwise it counts as text.
func sourceChars(v *fastjson.Value) int {
	if v.Type() != fastjson.TypeObject {
		return textChars(v)
	}
	o, _ := v.Object()
	types, media := 0, 0
	o.Visit(func(key []byte, v *fastjson.Value) {
		if !bytes.EqualFold(key, keyType) {
			return
		}
		types++
		if t, err := v.StringBytes(); err == nil && (string(t) == "base64" || string(t) == "url" || string(t) == "file") {
			media++
		}
	})
	if types > 0 && media == types {
		return 0
	}
	return textChars(v)
}

var keyType = []byte("type")

// jsonChars is the length in characters of v written as compact JSON
// (escapes aside): every key and string, and the punctuation around them.
func jsonChars(v *fastjson.Value) int {
	switch v.Type() {
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return utf8.RuneCount(s) + 2
	case fastjson.TypeNumber:
		return 1
	case fastjson.TypeTrue, fastjson.TypeNull:
		return 4
	case fastjson.TypeFalse:
		return 5
	case fastjson.TypeArray:
		items, _ := v.Array()
		n := 2 + max(len(items)-1, 0)
		for _, it := range items {
			n += jsonChars(it)
		}
		return n
	case fastjson.TypeObject:
		o, _ := v.Object()
		n := 2 + max(o.Len()-1, 0)
		o.Visit(func(key []byte, v *fastjson.Value) {
			n += utf8.RuneCount(key) + 3 + jsonChars(v)
		})
		return n
	}
	return 0
}
