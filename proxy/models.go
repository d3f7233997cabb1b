package proxy

// Model allow-lists (issue 14). A key and the deployment it is used on may
// each carry a list of model patterns (package modelglob); a request is let
// through only if every model it names is allowed by both. The models a
// request names are read from what is forwarded — the inspected body (every
// top-level "model" member, in any letter case, and every form field named
// so), the query (every "model" parameter) and the path of
// /v1/models/{id} — so that no spelling or repetition an upstream might
// honour escapes the check. A "model" that is not a string, in a JSON body,
// is refused as ambiguous (400); a request that names no model at all is
// refused (403) unless it is a GET or HEAD, since an upstream serves a
// request without one with its default model. GET /v1/models answers are
// filtered to the allowed models (filterModelList).

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/http"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/modelglob"
)

// modelRule is the model allow-lists that apply to one request: the key's
// and the deployment's (nil: none). It lives in the request's reading.
type modelRule struct {
	key, dep *modelglob.List
	// filterList is set for a GET /v1/models under a list: its answer is
	// filtered (filterModelList).
	filterList bool
}

// active reports whether any list restricts the models.
func (m *modelRule) active() bool {
	return (m.key != nil && !m.key.Any()) || (m.dep != nil && !m.dep.Any())
}

// allows reports whether both lists allow name.
func (m *modelRule) allows(name []byte) bool {
	return (m.key == nil || m.key.Allows(name)) && (m.dep == nil || m.dep.Allows(name))
}

var (
	errModelDenied = apierror.New(http.StatusForbidden, apierror.PermissionDenied,
		"this API key may not use the requested model here")
	errModelRequired = apierror.New(http.StatusForbidden, apierror.PermissionDenied,
		`this API key may only use some models here: name one in the request body's "model"`)
	errModelAmbiguous = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		`"model" must be a string wherever it appears (any letter case, every occurrence)`)
	errModelList = apierror.New(http.StatusBadGateway, apierror.UpstreamError,
		`the inference server's model list is not {"object": "list", "data": [{"id": "...", ...}]} within the edge's bound`)
)

func init() {
	for _, e := range []*apierror.Error{errModelDenied, errModelRequired, errModelAmbiguous, errModelList} {
		rendered[e] = e.Body()
	}
}

// hasModelList reports whether key or dep restricts models: the body's
// reading then matters (inspect).
func hasModelList(dep *event.Deployment, key *cache.Key) bool {
	return len(dep.Models) > 0 || (key != nil && !key.AllowedModels.Any())
}

// checkModels refuses (answering it) a request that names a model the
// lists do not allow, names one ambiguously, or names none where one is
// needed; it returns true when the request may go on. rt's compiled list
// is the deployment's.
func (s *Proxy) checkModels(ctx *fasthttp.RequestCtx, r *request, key *cache.Key, body *inspected) bool {
	m := &r.models
	m.dep = &r.rt.models
	if key != nil {
		m.key = &key.AllowedModels
	}
	if !m.active() {
		return true
	}
	named, refusal := requestModels(&ctx.Request.Header, r, body.raw, m)
	switch {
	case refusal != nil:
		fail(ctx, refusal, 0)
		return false
	case named == 0 && !r.getOrHead:
		fail(ctx, errModelRequired, 0)
		return false
	}
	// A GET or HEAD without a model (a listing, a route that takes none)
	// goes on; a listing's answer is filtered, whatever else it names.
	m.filterList = string(ctx.Request.Header.Method()) == fasthttp.MethodGet && string(r.path) == "/v1/models"
	return true
}

var (
	keyModel         = []byte("model")
	modelsPathPrefix = []byte("/v1/models/")
)

// requestModels counts the models r names (path, query, body raw under
// header h) and returns the refusal for one m does not allow or that is
// ambiguous.
func requestModels(h *fasthttp.RequestHeader, r *request, raw []byte, m *modelRule) (int, *apierror.Error) {
	named := 0
	check := func(name []byte) *apierror.Error {
		named++
		if !m.allows(name) {
			return errModelDenied
		}
		return nil
	}
	if id, ok := bytes.CutPrefix(r.path, modelsPathPrefix); ok {
		if e := check(id); e != nil {
			return named, e
		}
	}
	if e := formModels(r.query, check); e != nil {
		return named, e
	}
	if len(raw) == 0 {
		return named, nil
	}
	ct := parseContentType(h.ContentType())
	switch {
	case ct.is("multipart/form-data"):
		if e := multipartModels(raw, string(ct.boundary), check); e != nil {
			return named, e
		}
	case ct.is("application/x-www-form-urlencoded"):
		if e := formModels(raw, check); e != nil {
			return named, e
		}
	default:
		// Read as JSON, as readBody did (it refused what is not).
		return named, jsonModels(raw, check, true)
	}
	if looksLikeJSON(raw) { // a form that is also JSON is read both ways, as readBody does
		return named, jsonModels(raw, check, false)
	}
	return named, nil
}

// jsonModels checks every top-level member named "model" in any letter
// case. strict: a body that is not JSON is refused (it is one readBody
// read as JSON); otherwise it is no JSON reading and names nothing.
func jsonModels(raw []byte, check func([]byte) *apierror.Error, strict bool) *apierror.Error {
	p := bodyParsers.Get()
	defer bodyParsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		if strict {
			return errBadJSON
		}
		return nil
	}
	o, err := v.Object()
	if err != nil {
		return nil // null (readBody refuses other non-objects)
	}
	var refusal *apierror.Error
	o.Visit(func(k []byte, v *fastjson.Value) {
		if refusal != nil || !bytes.EqualFold(k, keyModel) {
			return
		}
		name, err := v.StringBytes()
		if err != nil {
			refusal = errModelAmbiguous
			return
		}
		refusal = check(name)
	})
	return refusal
}

// formModels checks every "model" pair of a urlencoded form (a query or a
// body), split on '&' and on ';' as well, as readURLEncoded reads it.
func formModels(form []byte, check func([]byte) *apierror.Error) *apierror.Error {
	if len(form) == 0 {
		return nil
	}
	var refusal *apierror.Error
	for _, seps := range formSeparators {
		formPairs(form, seps, func(k, v []byte) bool {
			if bytes.EqualFold(k, keyModel) {
				refusal = check(formDecode(v))
			}
			return refusal == nil
		})
		if refusal != nil {
			return refusal
		}
	}
	return nil
}

// multipartModels checks every part named "model" of a form readBody has
// read (and so found well formed and plain).
func multipartModels(body []byte, boundary string, check func([]byte) *apierror.Error) *apierror.Error {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var value bytes.Buffer
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil || !plainPart(p.Header) {
			return errBadForm
		}
		if !bytes.EqualFold(bytes.TrimSpace([]byte(p.FormName())), keyModel) {
			continue
		}
		value.Reset()
		if _, err := value.ReadFrom(p); err != nil {
			return errBadForm
		}
		if e := check(value.Bytes()); e != nil {
			return e
		}
	}
}

// maxModelListBytes bounds an upstream's GET /v1/models answer the edge
// filters.
const maxModelListBytes = 8 << 20

var errModelListShape = errors.New("model list is not the expected shape")

// filterModelList replaces a successful upstream answer to GET /v1/models
// with the same list holding only the models m allows. The answer must be
// a JSON object with one "data" array of objects each with one string "id"
// (and, if it has "object", one, "list"), at most maxModelListBytes once
// decoded; anything else is refused (502), never passed on unfiltered.
// Other members and the kept entries are re-encoded as they came. An answer
// that is not a 2xx is relayed as it is.
func filterModelList(resp *fasthttp.Response, m *modelRule) *apierror.Error {
	if sc := resp.StatusCode(); sc < 200 || sc > 299 {
		return nil
	}
	raw := resp.Body()
	if st := resp.BodyStream(); st != nil {
		b, err := io.ReadAll(io.LimitReader(st, maxModelListBytes+1))
		if err != nil || len(b) > maxModelListBytes {
			return errModelList
		}
		raw = b
	}
	if enc := bytes.TrimSpace(resp.Header.ContentEncoding()); len(enc) > 0 && !bytes.EqualFold(enc, []byte("identity")) {
		dec, err := decode(enc, raw, maxModelListBytes)
		if err != nil {
			return errModelList
		}
		raw = dec
	}
	out, err := filteredList(raw, m)
	if err != nil {
		return errModelList
	}
	resp.Header.Del(fasthttp.HeaderContentEncoding)
	resp.SetBody(out) // closes the upstream stream, read to its end
	resp.Header.SetContentLength(len(out))
	return nil
}

// filteredList is filterModelList's rewriting of the list raw.
func filteredList(raw []byte, m *modelRule) ([]byte, error) {
	p := bodyParsers.Get()
	defer bodyParsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		return nil, errModelListShape
	}
	o, err := v.Object()
	if err != nil {
		return nil, errModelListShape
	}
	datas, objects := 0, 0
	var shape error
	o.Visit(func(k []byte, v *fastjson.Value) {
		switch {
		case bytes.EqualFold(k, []byte("data")):
			datas++
			if string(k) != "data" || v.Type() != fastjson.TypeArray {
				shape = errModelListShape
			}
		case bytes.EqualFold(k, []byte("object")):
			objects++
			if s, err := v.StringBytes(); err != nil || string(k) != "object" || string(s) != "list" {
				shape = errModelListShape
			}
		}
	})
	if shape != nil || datas != 1 || objects > 1 {
		return nil, errModelListShape
	}
	var a fastjson.Arena
	out := append(make([]byte, 0, len(raw)), '{')
	first := true
	o.Visit(func(k []byte, v *fastjson.Value) {
		if shape != nil {
			return
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = a.NewStringBytes(k).MarshalTo(out)
		out = append(out, ':')
		if string(k) != "data" {
			out = v.MarshalTo(out)
			return
		}
		items, _ := v.Array()
		out = append(out, '[')
		kept := 0
		for _, it := range items {
			id, err := entryID(it)
			if err != nil {
				shape = err
				return
			}
			if !m.allows(id) {
				continue
			}
			if kept > 0 {
				out = append(out, ',')
			}
			kept++
			out = it.MarshalTo(out)
		}
		out = append(out, ']')
	})
	if shape != nil {
		return nil, shape
	}
	return append(out, '}'), nil
}

// entryID is the one string "id" (any letter case counts) of a model list
// entry.
func entryID(it *fastjson.Value) ([]byte, error) {
	o, err := it.Object()
	if err != nil {
		return nil, errModelListShape
	}
	var id []byte
	ids := 0
	o.Visit(func(k []byte, v *fastjson.Value) {
		if !bytes.EqualFold(k, []byte("id")) {
			return
		}
		ids++
		if s, err := v.StringBytes(); err == nil && string(k) == "id" {
			id = s
		} else {
			ids++ // a re-cased or non-string id: ambiguous
		}
	})
	if ids != 1 {
		return nil, errModelListShape
	}
	return id, nil
}
