package origin

// JSON in and out of the admin API: request bodies read as objects whose
// members are typed one by one (so that an error names its field), and
// answers written as JSON.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/keymesh/keymesh/internal/apierror"
)

// maxBody caps every request body of the admin API.
const maxBody = 1 << 20

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		apierror.New(http.StatusInternalServerError, apierror.InternalError, "encoding response failed").Write(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// object is a decoded JSON request body: its members, not yet decoded.
type object map[string]json.RawMessage

// members returns the names of o's members, sorted: what a change set,
// for its audit record (names only, never values).
func (o object) members() []string {
	names := make([]string, 0, len(o))
	for name := range o {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// readObject reads the request body as one JSON object whose members are
// all in allowed. An empty body is an empty object when emptyOK.
func readObject(r *http.Request, emptyOK bool, allowed ...string) (object, error) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, apierror.New(http.StatusRequestEntityTooLarge, apierror.ValidationError,
				fmt.Sprintf("request body is larger than %d bytes", maxBody))
		}
		return nil, apierror.New(http.StatusBadRequest, apierror.ValidationError, "reading request body failed")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if emptyOK {
			return object{}, nil
		}
		return nil, apierror.New(http.StatusBadRequest, apierror.ValidationError, "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var m object
	if err := dec.Decode(&m); err != nil || m == nil {
		var se *json.SyntaxError
		if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, apierror.New(http.StatusBadRequest, apierror.ValidationError, "malformed JSON").
				WithDetails(map[string]any{"offset": dec.InputOffset()})
		}
		return nil, apierror.New(http.StatusBadRequest, apierror.ValidationError, "request body must be a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, apierror.New(http.StatusBadRequest, apierror.ValidationError, "malformed JSON: data after the object")
	}
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	for k := range m {
		if !ok[k] {
			return nil, &FieldError{Field: k, Message: "unknown field"}
		}
	}
	return m, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// get decodes member name into dst if present. A null is refused unless
// nullable (then dst is left as is and null reports true).
func (o object) get(name string, dst any, nullable bool, want string) (present, null bool, err error) {
	raw, ok := o[name]
	if !ok {
		return false, false, nil
	}
	if isNull(raw) {
		if !nullable {
			return true, true, validation(name, "must not be null")
		}
		return true, true, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		msg := "must be " + want
		if strings.Contains(err.Error(), "unknown field") {
			msg = strings.TrimPrefix(err.Error(), "json: ")
		}
		return true, false, validation(name, msg)
	}
	return true, false, nil
}
