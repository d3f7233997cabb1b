package origin

// Checks shared by the resources' validators (each resource's own are next
// to its handlers, in api_*.go).

import (
	"fmt"
	"regexp"
	"unicode"

	"github.com/keymesh/keymesh/event"
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

// validation is the error of one field's value (a 400 naming the field).
func validation(field, msg string) error { return &FieldError{Field: field, Message: msg} }
