package event

import "strconv"

// NATS names shared by origin and edges.
const (
	// StreamName is the JetStream stream holding every change in revision
	// order. The origin publishes with an expected last sequence, so a
	// change's stream sequence equals its revision.
	StreamName = "KEYMESH_EVENTS"
	// SubjectPrefix starts every event subject; StreamSubjects covers them.
	SubjectPrefix  = "keymesh.events."
	StreamSubjects = SubjectPrefix + ">"
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
	// EdgeHeartbeatSubject carries every edge's unsigned JSON heartbeat
	// (id, site, address, applied revision), published over core NATS every
	// heartbeat interval and soon after the edge applies new revisions. Every
	// origin replica subscribes (no queue group). Heartbeats are not signed:
	// they can only delay a ?wait, never grant access.
	EdgeHeartbeatSubject = "keymesh.edge.heartbeat"
	// EdgeAuditSubject carries edges' per-request audit records, a JSON
	// array per message, over core NATS (at most once).
	EdgeAuditSubject = "keymesh.edge.audit"
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
