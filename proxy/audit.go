package proxy

import (
	"net"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/keymesh/keymesh/internal/rfc3339"

	"github.com/valyala/fasthttp"
)

const (
	// auditMaxPath and auditMaxRequestID cut long values before they are
	// encoded.
	auditMaxPath      = 512
	auditMaxRequestID = 128
)

// auditWire is the shape of an audit record as encoded for the AuditSink
// (and shipped to the origin and written to the audit file by the edge).
type auditWire struct {
	Time           time.Time `json:"time"`
	Edge           string    `json:"edge"`
	Site           string    `json:"site"`
	ClientIP       string    `json:"client_ip"`
	KeyID          string    `json:"key_id,omitempty"`
	Project        string    `json:"project,omitempty"`
	Deployment     string    `json:"deployment,omitempty"`
	DeploymentName string    `json:"deployment_name,omitempty"`
	Method         string    `json:"method"`
	Path           string    `json:"path"`
	Status         int       `json:"status"`
	DurationMS     float64   `json:"duration_ms"`
	RequestID      string    `json:"request_id,omitempty"`
	// Reason is why the request was refused (auditReasons); none for one
	// let through.
	Reason string `json:"reason,omitempty"`
	// Tokens of a metered request (see UsageSink); Estimated when counted
	// from what was relayed rather than reported by the upstream.
	PromptTokens     *int64 `json:"prompt_tokens,omitempty"`
	CompletionTokens *int64 `json:"completion_tokens,omitempty"`
	Estimated        bool   `json:"estimated,omitempty"`
}

// auditRecorder encodes each answered request's record straight into a
// pooled buffer and hands it to the sink: no allocation, no reflection.
type auditRecorder struct {
	sink     AuditSink
	edgeSite []byte // `"edge":"…","site":"…"`, encoded once
	// times formats the records' times (records of one second share its
	// formatting); a pointer, as the recorder is copied.
	times *rfc3339.Formatter
}

func newAuditRecorder(sink AuditSink, edge, site string) auditRecorder {
	a := auditRecorder{sink: sink, times: new(rfc3339.Formatter)}
	a.edgeSite = append(a.edgeSite, `"edge":`...)
	a.edgeSite = appendJSONString(a.edgeSite, edge)
	a.edgeSite = append(a.edgeSite, `,"site":`...)
	a.edgeSite = appendJSONString(a.edgeSite, site)
	return a
}

// auditMaxRecord bounds one encoded record: the longest path and request
// id plus every other field.
const auditMaxRecord = 2*auditMaxPath + 2*auditMaxRequestID + 1024

// auditBufs holds encoding buffers: handed to the sink through an
// interface, a buffer on the stack would escape, costing an allocation
// per request.
var auditBufs = sync.Pool{New: func() any { b := make([]byte, 0, auditMaxRecord); return &b }}

// record gives the sink the audit record of the request ctx has been
// answered with.
func (a *auditRecorder) record(ctx *fasthttp.RequestCtx, out *outcome) {
	if a.sink == nil {
		return
	}
	bp := auditBufs.Get().(*[]byte)
	rec := a.encode((*bp)[:0], ctx, out)
	a.sink.Record(rec)
	*bp = rec[:0]
	auditBufs.Put(bp)
}

// encode appends the JSON object of one request's record (the shape of
// auditWire) to dst. It never holds the credential: the path is cut before
// its query, the request id is the edge's own header.
func (a *auditRecorder) encode(dst []byte, ctx *fasthttp.RequestCtx, out *outcome) []byte {
	start := ctx.Time()
	dst = append(dst, `{"time":"`...)
	dst = a.times.AppendNano(dst, start.UTC())
	dst = append(dst, `",`...)
	dst = append(dst, a.edgeSite...)
	dst = append(dst, `,"client_ip":"`...)
	if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		dst = ta.AddrPort().Addr().Unmap().AppendTo(dst)
	}
	dst = append(dst, '"')
	project := ""
	if out.key != nil {
		dst = appendJSONField(dst, "key_id", out.key.ID)
		project = out.key.Project
	}
	if out.dep != nil {
		if project == "" {
			project = out.dep.Project
		}
		dst = appendJSONField(dst, "deployment", out.dep.ID)
		dst = appendJSONField(dst, "deployment_name", out.dep.Name)
	}
	dst = appendJSONField(dst, "project", project)
	dst = appendJSONField(dst, "method", clip(ctx.Method(), 16))
	// The path the edge read (nothing for a request it could not read or
	// refused from its line and headers: the raw bytes might hold a key).
	if r := out.req; r != nil && (r.refusal == nil || r.refusal == errNoDeployment) {
		path := r.path
		if r.clientPath != nil {
			path = r.clientPath // what the client asked for, not the rewrite
		}
		dst = appendJSONField(dst, "path", clip(path, auditMaxPath))
	}
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(ctx.Response.StatusCode()), 10)
	dst = append(dst, `,"duration_ms":`...)
	dst = appendMillis(dst, out.took.Microseconds())
	var id []byte
	if out.req != nil {
		id = out.req.id
	}
	if len(id) == 0 { // a request fasthttp could not read (serveError)
		id = ctx.Response.Header.PeekBytes(headerRequestID)
	}
	dst = appendJSONField(dst, "request_id", clip(id, auditMaxRequestID))
	why := out.reason
	if out.refused != reasonNone {
		why = out.refused
	}
	dst = appendJSONField(dst, "reason", auditReasons[why])
	if u := out.usage; u.ok {
		dst = append(dst, `,"prompt_tokens":`...)
		dst = strconv.AppendInt(dst, u.prompt, 10)
		dst = append(dst, `,"completion_tokens":`...)
		dst = strconv.AppendInt(dst, u.completion, 10)
		if u.estimated {
			dst = append(dst, `,"estimated":true`...)
		}
	}
	return append(dst, '}')
}

// appendMillis appends us microseconds as milliseconds, as
// strconv.AppendFloat(float64(us)/1000, 'f', -1, 64) does: the shortest
// decimal that reads back as that float, which for a count of
// microseconds below maxExactMillis is the exact one (a float64 holds
// over 15 significant digits; TestAuditMillisAsFormatted).
func appendMillis(dst []byte, us int64) []byte {
	if us < 0 || us >= maxExactMillis {
		return strconv.AppendFloat(dst, float64(us)/1000, 'f', -1, 64)
	}
	dst = strconv.AppendInt(dst, us/1000, 10)
	if f := us % 1000; f != 0 {
		frac := [4]byte{'.', byte('0' + f/100), byte('0' + f/10%10), byte('0' + f%10)}
		n := len(frac)
		for frac[n-1] == '0' {
			n--
		}
		dst = append(dst, frac[:n]...)
	}
	return dst
}

// maxExactMillis bounds the durations appendMillis formats itself: 10^12
// microseconds, eleven days and more.
const maxExactMillis = 1e12

func clip[T string | []byte](b T, n int) T {
	if len(b) > n {
		b = b[:n]
	}
	return b
}

// appendJSONField appends `,"name":"value"`; an empty value is left out.
func appendJSONField[T string | []byte](dst []byte, name string, value T) []byte {
	if len(value) == 0 {
		return dst
	}
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return appendJSONString(dst, value)
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD (as
// encoding/json does). The bytes copied as they are (printable ASCII but
// the quote and the backslash) are skipped eight at a time where they
// run (a path, a request id), one at a time where they do not.
func appendJSONString[T string | []byte](dst []byte, s T) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; ; {
		for i+8 <= len(s) {
			w := s[i : i+8] // constant indices: one load
			if stopBytes(uint64(w[0])|uint64(w[1])<<8|uint64(w[2])<<16|uint64(w[3])<<24|
				uint64(w[4])<<32|uint64(w[5])<<40|uint64(w[6])<<48|uint64(w[7])<<56) != 0 { // a byte to escape or decode: stopBytes (prompt_fast.go)
				break
			}
			i += 8
		}
		for i < len(s) && jsonPlain[s[i]] {
			i++
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonPlain[c] is true for the bytes appendJSONString copies as they are.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()
