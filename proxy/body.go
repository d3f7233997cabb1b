package proxy

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// Body inspection. Two decisions depend on a request's body: whether it
// asks to stream (a key without use_streaming is refused) and how long its
// prompt is (max_prompt_chars). The edge reads the body as an upstream
// would — decompressed, whatever its encoding, as a form where it is one —
// and forwards exactly what it read; a body it cannot read that way is
// refused (415) whenever the reading could change the decision. It fails
// closed: where upstream parsers differ, the edge takes the reading that
// streams and counts the most.

// inspected is what the edge read of a request body.
type inspected struct {
	// raw is the body to forward: as received, or decoded (decoded set:
	// without its Content-Encoding), or without a UTF-8 byte-order mark.
	raw     []byte
	decoded bool
	stream  bool
	chars   int
	// json: raw was read as one JSON value (not a form, not unread), so
	// metering may rewrite it exactly (meterRequest).
	json bool
	// maxTok is the JSON body's maximum tokens, read when a token bound
	// applies (tokens.go); forms are read for it there.
	maxTok maxTokens
	// model is the JSON body's model as metering records it, when
	// modelRead: read in the same pass, for a body without a backslash
	// (else meterRequest reads it).
	model     []byte
	modelRead bool
}

var (
	errUninspectable = apierror.New(http.StatusUnsupportedMediaType, apierror.ValidationError,
		"the edge cannot read this request body as the inference server would: send UTF-8 JSON (or a form), uncompressed or with Content-Encoding gzip or deflate")
	errBodyEncoding = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"the request body does not decode as its Content-Encoding says")
	errBadForm = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"the request body is not a valid form")
	errPromptTooLong = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"prompt is longer than this deployment allows")
)

func init() {
	for _, e := range []*apierror.Error{errUninspectable, errBodyEncoding, errBadForm} {
		rendered[e] = e.Body()
	}
}

// inspect reads the request body for the decisions that depend on it; a
// body it refuses is answered, and why is its reason (reasonNone otherwise).
func (s *Proxy) inspect(ctx *fasthttp.RequestCtx, dep *event.Deployment, key *cache.Key) (body inspected, why reason) {
	limit := s.cfg.MaxRequestBodyBytes
	if dep.MaxBodyBytes > 0 && dep.MaxBodyBytes < int64(limit) {
		limit = int(dep.MaxBodyBytes)
	}
	// The reading matters if a prompt limit applies, the key may not
	// stream or a model allow-list applies (models.go); otherwise a body
	// the edge cannot read may pass as it is.
	// A token bound needs the request's max_tokens (tokens.go): the edge
	// must read what the upstream will.
	tokens := tokenBounded(dep, key)
	matters := dep.MaxPromptChars > 0 || (key != nil && !key.Has(event.PermUseStreaming)) || hasModelList(dep, key) || tokens
	body, refusal := readBodyTokens(&ctx.Request.Header, ctx.Request.Body(), limit, matters, tokens)
	if refusal != nil {
		if refusal == errUninspectable {
			s.metrics.refused[refusedBodyEncoding].Inc()
		}
		fail(ctx, refusal, 0)
		if refusal == errBodyTooLarge {
			return body, reasonTooLarge
		}
		return body, reasonBadBody
	}
	if dep.MaxPromptChars > 0 && body.chars > dep.MaxPromptChars {
		fail(ctx, errPromptTooLong.WithDetails(map[string]int{"max_prompt_chars": dep.MaxPromptChars, "prompt_chars": body.chars}), 0)
		return body, reasonPromptLong
	}
	return body, reasonNone
}

// readBody is inspect's reading of raw under header h: the body to forward,
// whether it streams and its prompt characters, or the refusal. limit
// bounds a decompressed body; matters says whether an unreadable body must
// be refused rather than passed on unread.
func readBody(h *fasthttp.RequestHeader, raw []byte, limit int, matters bool) (inspected, *apierror.Error) {
	return readBodyTokens(h, raw, limit, matters, false)
}

// readBodyTokens is readBody reading, with tokens, a JSON body's maximum
// tokens in the same pass.
func readBodyTokens(h *fasthttp.RequestHeader, raw []byte, limit int, matters, tokens bool) (inspected, *apierror.Error) {
	out := inspected{raw: raw}
	if len(raw) == 0 {
		return out, nil
	}
	// Content-Encoding: decoded within the body limit (a small body can
	// inflate to a huge one), or refused.
	var coding []byte
	codings := 0
	for v := range fieldValues(h, headerContentEncoding) {
		if codings == 0 {
			coding = bytes.TrimSpace(v)
		}
		codings++
	}
	if codings > 0 {
		switch {
		case codings == 1 && (len(coding) == 0 || bytes.EqualFold(coding, []byte("identity"))):
		case !matters:
			return out, nil // forwarded as it came, unread
		case codings > 1 || bytes.IndexByte(coding, ',') >= 0:
			return out, errUninspectable // several codings: not worth the risk
		default:
			dec, err := decode(coding, raw, limit)
			switch {
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				return out, errBodyTooLarge
			case errors.Is(err, errCodingUnknown):
				return out, errUninspectable
			case err != nil:
				return out, errBodyEncoding
			}
			out.raw, out.decoded = dec, true
		}
	}
	ct := parseContentType(h.ContentType())
	if ct.hasCharset && !utf8Charset(ct.charset) {
		// A server that honours the charset reads other characters than
		// the edge would.
		if matters {
			return out, errUninspectable
		}
		return out, nil
	}
	switch {
	case ct.is("multipart/form-data"):
		if !matters {
			return out, nil
		}
		var err error
		out.chars, out.stream, err = readMultipart(out.raw, string(ct.boundary))
		if errors.Is(err, errPartUninspectable) {
			return out, errUninspectable
		}
		if err != nil {
			return out, errBadForm
		}
		return out.orJSON(), nil
	case ct.is("application/x-www-form-urlencoded"):
		if !matters {
			return out, nil
		}
		out.chars, out.stream = readURLEncoded(out.raw)
		return out.orJSON(), nil
	}
	// Anything else is read as JSON, as many servers do whatever the
	// Content-Type says — first its encoding, as Python's json module
	// detects it.
	switch jsonEncoding(out.raw) {
	case encUTF8BOM:
		out.raw = out.raw[3:]
	case encUTF16, encUTF32:
		if matters {
			return out, errUninspectable
		}
		return out, nil
	}
	if !isJSON(ct.media) && !looksLikeJSON(out.raw) {
		if matters {
			return out, errUninspectable // text, octet streams: no reading the edge can vouch for
		}
		return out, nil
	}
	var mt *maxTokens
	if tokens {
		mt = &out.maxTok
	}
	var model *[]byte
	if bytes.IndexByte(out.raw, '\\') < 0 {
		model, out.modelRead = &out.model, true
	}
	var err error
	if out.chars, out.stream, err = parseBodyModel(out.raw, mt, model); err != nil {
		return out, errBadJSON
	}
	out.json = true
	return out, nil
}

// orJSON adds to a form's reading the reading of a server that parses the
// body as JSON whatever its Content-Type: the larger count, either stream.
func (b inspected) orJSON() inspected {
	if looksLikeJSON(b.raw) {
		if n, stream, err := parseBody(b.raw); err == nil {
			b.chars, b.stream = max(b.chars, n), b.stream || stream
		}
	}
	return b
}

var errCodingUnknown = errors.New("unknown content coding")

// decode undoes one content coding within limit bytes: gzip (or its alias
// x-gzip) and deflate. Others — br, zstd, compress — are refused: no
// mainstream inference client sends them, and each decoder is more code
// reading attacker-chosen bytes.
func decode(coding, raw []byte, limit int) ([]byte, error) {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.SetBodyRaw(raw) // the decoded body is a buffer of its own
	switch {
	case bytes.EqualFold(coding, []byte("gzip")), bytes.EqualFold(coding, []byte("x-gzip")):
		return req.BodyGunzipWithLimit(limit)
	case bytes.EqualFold(coding, []byte("deflate")):
		return req.BodyInflateWithLimit(limit)
	}
	return nil, errCodingUnknown
}

// contentType is a Content-Type read without allocating: the media type
// and the two parameters the edge looks at, as slices of the header value.
type contentType struct {
	media, charset, boundary []byte
	hasCharset               bool
}

func (c contentType) is(mt string) bool { return bytes.EqualFold(c.media, []byte(mt)) }

func parseContentType(ct []byte) contentType {
	mt, rest, _ := bytes.Cut(ct, []byte(";"))
	c := contentType{media: bytes.TrimSpace(mt)}
	for len(rest) > 0 {
		var p []byte
		p, rest = cutParam(rest)
		name, value, ok := bytes.Cut(p, []byte("="))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		switch name = bytes.TrimSpace(name); {
		case bytes.EqualFold(name, []byte("charset")):
			c.charset, c.hasCharset = value, true
		case bytes.EqualFold(name, []byte("boundary")):
			c.boundary = value
		}
	}
	return c
}

// cutParam cuts one parameter off a Content-Type's parameter list, minding
// quoted strings.
func cutParam(s []byte) (param, rest []byte) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			quoted = !quoted
		case c == '\\' && quoted:
			i++
		case c == ';' && !quoted:
			return s[:i], s[i+1:]
		}
	}
	return s, nil
}

func utf8Charset(cs []byte) bool {
	for _, ok := range []string{"utf-8", "utf8", "us-ascii", "ascii"} {
		if bytes.EqualFold(cs, []byte(ok)) {
			return true
		}
	}
	return false
}

// isJSON reports whether a media type names JSON: application/json or a
// +json suffix. No Content-Type counts as JSON: that is how clients that
// forget it are understood.
func isJSON(mt []byte) bool {
	return len(mt) == 0 || bytes.EqualFold(mt, []byte("application/json")) ||
		(len(mt) > 5 && bytes.EqualFold(mt[len(mt)-5:], []byte("+json")))
}

// looksLikeJSON reports whether raw starts, after white space, like a JSON
// object or array.
func looksLikeJSON(raw []byte) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && (raw[0] == '{' || raw[0] == '[')
}

// JSON text encodings, as Python's json.detect_encoding tells them apart
// (a byte-order mark, else the pattern of zero bytes in the first four).
const (
	encUTF8 = iota
	encUTF8BOM
	encUTF16
	encUTF32
)

func jsonEncoding(b []byte) int {
	switch {
	case bytes.HasPrefix(b, []byte{0, 0, 0xfe, 0xff}), bytes.HasPrefix(b, []byte{0xff, 0xfe, 0, 0}):
		return encUTF32
	case bytes.HasPrefix(b, []byte{0xfe, 0xff}), bytes.HasPrefix(b, []byte{0xff, 0xfe}):
		return encUTF16
	case bytes.HasPrefix(b, []byte{0xef, 0xbb, 0xbf}):
		return encUTF8BOM
	}
	switch {
	case len(b) >= 4 && b[0] == 0 && b[1] == 0:
		return encUTF32
	case len(b) >= 4 && b[0] == 0:
		return encUTF16
	case len(b) >= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0:
		return encUTF32
	case len(b) >= 4 && b[1] == 0:
		return encUTF16
	case len(b) == 2 && (b[0] == 0 || b[1] == 0):
		return encUTF16
	}
	return encUTF8
}

var errPartUninspectable = errors.New("a form part the edge cannot read as every server would")

// readMultipart reads a multipart/form-data body: the characters of every
// part named like a prompt field, and whether a part named "stream" says
// anything but false. Parts some parsers decode and others do not (a
// Content-Transfer-Encoding, RFC 2231 names) are errPartUninspectable.
func readMultipart(body []byte, boundary string) (chars int, stream bool, err error) {
	if boundary == "" {
		return 0, false, errBadMultipart
	}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var value bytes.Buffer
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return chars, stream, nil
		}
		if err != nil {
			return 0, false, errBadMultipart
		}
		if !plainPart(p.Header) {
			return 0, false, errPartUninspectable
		}
		name := bytes.TrimSpace([]byte(p.FormName()))
		isStream := bytes.EqualFold(name, keyStream)
		kind, _ := lookupFold(promptFields, name)
		if !isStream && kind == notPrompt {
			if _, err := io.Copy(io.Discard, p); err != nil {
				return 0, false, errBadMultipart
			}
			continue
		}
		value.Reset()
		if _, err := value.ReadFrom(p); err != nil {
			return 0, false, errBadMultipart
		}
		if isStream {
			stream = stream || !falseValue(value.Bytes())
		} else {
			chars += utf8.RuneCount(value.Bytes())
		}
	}
}

var errBadMultipart = errors.New("malformed multipart body")

// plainPart reports whether a part's headers are read the same by every
// form parser: one Content-Disposition without RFC 2231 extended
// parameters, and no Content-Transfer-Encoding but the identity ones.
func plainPart(h textproto.MIMEHeader) bool {
	cd := h.Values("Content-Disposition")
	if len(cd) != 1 || bytes.Contains([]byte(cd[0]), []byte("*=")) {
		return false
	}
	for _, cte := range h.Values("Content-Transfer-Encoding") {
		switch string(bytes.ToLower(bytes.TrimSpace([]byte(cte)))) {
		case "7bit", "8bit", "binary":
		default:
			return false
		}
	}
	return true
}

// falseValue reports whether a form value is one a server reads as false
// (pydantic's spellings; absent and empty too).
func falseValue(v []byte) bool {
	switch string(bytes.ToLower(bytes.TrimSpace(v))) {
	case "", "0", "f", "false", "n", "no", "off":
		return true
	}
	return false
}

// readURLEncoded reads an application/x-www-form-urlencoded body like
// readMultipart. Parsers split pairs on '&' and some on ';' too: both
// readings are taken, the larger count and either stream.
func readURLEncoded(body []byte) (chars int, stream bool) {
	for _, seps := range formSeparators {
		n := 0
		formPairs(body, seps, func(k, v []byte) bool {
			if bytes.EqualFold(k, keyStream) {
				stream = stream || !falseValue(formDecode(v))
			} else if kind, _ := lookupFold(promptFields, k); kind != notPrompt {
				n += utf8.RuneCount(formDecode(v))
			}
			return true
		})
		chars = max(chars, n)
	}
	return chars, stream
}

// formSeparators are the two readings of a urlencoded form: pairs split on
// '&' only, and on ';' as well (parsers differ).
var formSeparators = [...]string{"&", "&;"}

// formPairs calls fn with each pair of form split on seps: its key
// decoded and trimmed, its value as sent. fn returns false to stop.
func formPairs(form []byte, seps string, fn func(k, v []byte) bool) {
	for rest := form; len(rest) > 0; {
		var pair []byte
		if i := bytes.IndexAny(rest, seps); i >= 0 {
			pair, rest = rest[:i], rest[i+1:]
		} else {
			pair, rest = rest, nil
		}
		k, v, _ := bytes.Cut(pair, []byte("="))
		if !fn(bytes.TrimSpace(formDecode(k)), v) {
			return
		}
	}
}

// formDecode decodes '+' and percent-escapes (a malformed one is kept).
func formDecode(b []byte) []byte {
	if bytes.IndexAny(b, "+%") < 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '+':
			out = append(out, ' ')
		case c == '%' && i+2 < len(b) && isHex(b[i+1]) && isHex(b[i+2]):
			out = append(out, unhex(b[i+1])<<4|unhex(b[i+2]))
			i += 2
		default:
			out = append(out, c)
		}
	}
	return out
}
