package event

import (
	"fmt"
	"strconv"
	"strings"
)

// NATS names shared by origin and edges.
const (
	// StreamName is the JetStream stream holding every change in revision
	// order. The origin publishes with an expected last sequence, so a
	// change's stream sequence equals its revision.
	StreamName = "KEYMESH_EVENTS"
	// SubjectPrefix starts every event subject; StreamSubjects covers them.
	SubjectPrefix  = "keymesh.events."
	StreamSubjects = SubjectPrefix + ">"
	// LiveSubjects covers LiveSubject: the origin republishes each event
	// there over core NATS once the stream has acknowledged it, so that
	// edges apply the next revision as it comes, without waiting for their
	// stream consumer's next pull request (edge/feed). The stream does not
	// take these subjects (it takes the kinds' own, see origin's
	// streamSubjects); edges may subscribe to them (StreamSubjects).
	LiveSubjects = SubjectPrefix + "live.>"
	// LookupKeySubject answers a request carrying a key hash (32 raw bytes)
	// with a sealed KindKey or KindKeyNotFound record.
	LookupKeySubject = "keymesh.lookup.key"
	// SnapshotSubject answers an empty request with a sealed KindSnapshot,
	// one message. A request with header SnapshotChunksHeader is answered
	// with Count sealed KindSnapshotChunk records, each its own message to
	// the reply subject, in order, each well under NATS max_payload: a
	// project's deployments may not fit in one message.
	SnapshotSubject = "keymesh.lookup.snapshot"
	// SnapshotChunksHeader on a snapshot request asks for chunks.
	SnapshotChunksHeader = "Keymesh-Snapshot-Chunks"
	// OriginHeartbeatSubject carries the origin's sealed KindHeartbeat
	// records, published every heartbeat interval by every replica.
	OriginHeartbeatSubject = "keymesh.origin.heartbeat"
	// OriginBalanceSubject carries the origin's sealed KindBalance
	// records over core NATS (at most once: the next one heals a lost
	// one), published by every replica; every edge subscribes.
	OriginBalanceSubject = "keymesh.origin.balance"
	// EdgeHeartbeatSubject is the base of the subjects carrying edges'
	// unsigned JSON heartbeats (id, site, address, applied revision),
	// published over core NATS every heartbeat interval and soon after the
	// edge applies new revisions. Edge id E publishes on
	// EdgeSubject(EdgeHeartbeatSubject, E); the NATS credentials the origin
	// issues to E allow no other edge's subject, and the origin takes the
	// edge's identity from the subject, never from the payload. Every origin
	// replica subscribes (no queue group).
	EdgeHeartbeatSubject = "keymesh.edge.heartbeat"
	// EdgeAuditSubject is the base of the subjects carrying edges'
	// per-request audit records, a JSON array per message, over core NATS
	// (at most once); per edge like EdgeHeartbeatSubject.
	EdgeAuditSubject = "keymesh.edge.audit"
	// EdgeUsageSubject is the base of the per-edge subjects reserved for
	// edges' usage reports (per edge like EdgeHeartbeatSubject).
	EdgeUsageSubject = "keymesh.edge.usage"
	// EdgeLimitsSubject is the base of the per-edge subjects carrying
	// edges' LimitReports (Marshal's JSON) over core NATS, every sync
	// interval: edge E publishes on EdgeSubject(EdgeLimitsSubject, E) and
	// subscribes EdgeLimitsSubject + ".*"; a report whose Edge differs from
	// the subject's edge is dropped.
	EdgeLimitsSubject = "keymesh.edge.limits"
	// EdgeInboxPrefix starts the reply inbox of every edge:
	// EdgeInbox(E) is edge E's, the only inbox its credentials may read.
	EdgeInboxPrefix = "_INBOX.edge"
	// AuditQueue is the queue group origin replicas store edge audit
	// batches in, so each batch is stored once.
	AuditQueue = "keymesh-origin-audit"
	// LookupQueue is the queue group origin replicas answer lookups in.
	LookupQueue = "keymesh-origin"
	// ErrorHeader on a lookup reply says the origin could not answer; the
	// value is a short reason, never a secret.
	ErrorHeader = "Keymesh-Error"
)

// Subject returns the subject a record of kind k at revision rev is
// published on.
func Subject(k Kind, rev uint64) string {
	return SubjectPrefix + string(k) + "." + strconv.FormatUint(rev, 10)
}

// LiveSubject is the subject of the live copy of the event at rev.
func LiveSubject(rev uint64) string {
	return SubjectPrefix + "live." + strconv.FormatUint(rev, 10)
}

// LiveRevision is the revision a live subject names (LiveSubject's
// inverse); ok is false for any other subject.
func LiveRevision(subject string) (rev uint64, ok bool) {
	s, found := strings.CutPrefix(subject, SubjectPrefix+"live.")
	if !found {
		return 0, false
	}
	rev, err := strconv.ParseUint(s, 10, 64)
	return rev, err == nil && rev > 0
}

// EdgeSubject returns edge id's subject under base (EdgeHeartbeatSubject,
// EdgeAuditSubject, EdgeUsageSubject or EdgeLimitsSubject): base + "." + EdgeToken(id).
func EdgeSubject(base, id string) string { return base + "." + EdgeToken(id) }

// EdgeInbox returns the inbox prefix of edge id (nats.CustomInboxPrefix).
func EdgeInbox(id string) string { return EdgeInboxPrefix + "." + EdgeToken(id) }

// EdgeFromSubject returns the edge id of a subject EdgeSubject(base, id)
// built, and false for any other subject.
func EdgeFromSubject(base, subject string) (string, bool) {
	tok, ok := strings.CutPrefix(subject, base+".")
	if !ok || tok == "" || strings.Contains(tok, ".") {
		return "", false
	}
	id, err := ParseEdgeToken(tok)
	return id, err == nil && id != ""
}

// EdgeToken encodes an edge id as one NATS subject token: letters, digits,
// '-' and '_' stay, every other byte becomes %XX, so distinct ids give
// distinct tokens and none holds '.', '*', '>' or white space.
func EdgeToken(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ParseEdgeToken reverses EdgeToken; it refuses any token EdgeToken would
// not produce.
func ParseEdgeToken(tok string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_':
			b.WriteByte(c)
		case c == '%' && i+2 < len(tok):
			v, err := strconv.ParseUint(tok[i+1:i+3], 16, 8)
			if err != nil || tok[i+1:i+3] != fmt.Sprintf("%02X", v) || isTokenByte(byte(v)) {
				return "", fmt.Errorf("edge token %q: bad escape", tok)
			}
			b.WriteByte(byte(v))
			i += 2
		default:
			return "", fmt.Errorf("edge token %q: bad byte", tok)
		}
	}
	return b.String(), nil
}

func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
