package origin

// Checks shared by the resources' validators (each resource's own are next
// to its handlers, in api_*.go).

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/modelglob"
)

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	hostRE = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$`)
	siteRE = regexp.MustCompile(`^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,62})$`)
	// secretNameRE: runs of letters and digits joined by single '.', '_'
	// or '-'. So a name can hold no path separator, no "." or ".." and no
	// "__" — the separator of an edge's EDGE_SECRET_<PROJECT>__<NAME> — and
	// can never name another project's secret on an edge, which resolves it
	// under the deployment's own project (<secrets-dir>/<project>/<name>).
	secretNameRE = regexp.MustCompile(`^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$`)
	headerRE     = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

func validName(field, s string) error {
	if !nameRE.MatchString(s) {
		return validation(field, "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

func validText(field, s string, max int) error {
	if len(s) > max {
		return validation(field, fmt.Sprintf("must be at most %d bytes", max))
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return validation(field, "must not contain control characters")
		}
	}
	return nil
}

// validRateLimit checks a key's or deployment's rate_limit (nil: none).
func validRateLimit(rl *event.RateLimit) error {
	if rl != nil && (rl.RequestsPerMinute < 1 || rl.RequestsPerMinute > maxRequestsPerMin) {
		return validation("rate_limit", fmt.Sprintf("requests_per_minute must be between 1 and %d", maxRequestsPerMin))
	}
	return nil
}

// decodeModels reads and checks a key's or deployment's "models": a list
// of at most modelglob.MaxPatterns patterns (modelglob.Valid), duplicates
// dropped, in the order given; [] and null mean any model (nil).
func decodeModels(o object) (present bool, models []string, err error) {
	var list []string
	present, null, err := o.get("models", &list, true, `a list of model name patterns, or null`)
	if err != nil || !present || null {
		return present, nil, err
	}
	if len(list) > modelglob.MaxPatterns {
		return true, nil, validation("models", fmt.Sprintf("at most %d patterns", modelglob.MaxPatterns))
	}
	seen := map[string]bool{}
	for _, p := range list {
		if err := modelglob.Valid(p); err != nil {
			return true, nil, validation("models", fmt.Sprintf("%q: %s (a pattern is 1-%d bytes without spaces or control characters; '*' is the only wildcard)",
				truncate(p, 80), strings.TrimPrefix(err.Error(), modelglob.ErrPattern.Error()+": "), modelglob.MaxPatternLen))
		}
		if !seen[p] {
			seen[p] = true
			models = append(models, p)
		}
	}
	return true, models, nil
}

// decodeConcurrency reads and checks "max_concurrency": 1 to
// maxConcurrency, or null for no cap (0).
func decodeConcurrency(o object) (present bool, n int, err error) {
	present, null, err := o.get("max_concurrency", &n, true, "a whole number of requests, or null")
	if err != nil || !present || null {
		return present, 0, err
	}
	if n < 1 || n > maxConcurrency {
		return true, 0, validation("max_concurrency", fmt.Sprintf("must be between 1 and %d, or null for no cap", maxConcurrency))
	}
	return true, n, nil
}

// modelsAnswer is a model list as the API shows it: [] for any model.
func modelsAnswer(m []string) []string {
	if m == nil {
		return []string{}
	}
	return m
}

// concurrencyAnswer is a concurrency cap as the API shows it: null for
// none.
func concurrencyAnswer(n int) *int {
	if n <= 0 {
		return nil
	}
	return &n
}

// validation is the error of one field's value (a 400 naming the field).
func validation(field, msg string) error { return &FieldError{Field: field, Message: msg} }
