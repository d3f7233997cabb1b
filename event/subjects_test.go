package event

import "testing"

// LiveRevision reads back what LiveSubject wrote, and nothing else.
func TestLiveRevision(t *testing.T) {
	for _, rev := range []uint64{1, 42, 1<<64 - 1} {
		if got, ok := LiveRevision(LiveSubject(rev)); !ok || got != rev {
			t.Errorf("LiveRevision(LiveSubject(%d)) = %d, %v", rev, got, ok)
		}
	}
	for _, s := range []string{"", SubjectPrefix + "live.", SubjectPrefix + "live.0", SubjectPrefix + "live.-1",
		SubjectPrefix + "live.1.2", SubjectPrefix + "live.x", Subject(KindKey, 7), "keymesh.events.live"} {
		if rev, ok := LiveRevision(s); ok {
			t.Errorf("LiveRevision(%q) = %d, true", s, rev)
		}
	}
}
