package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/keymesh/keymesh/event"
)

// State is what an edge persists so that a restart resumes the event stream
// after the revision it had applied instead of replaying it. It holds sealed
// records only, and Restore verifies them again: the file is not trusted
// more than the network.
type State struct {
	Revision uint64 `json:"revision"`
	// Snapshot is a single KindSnapshot record: state written before
	// chunked snapshots. State writes SnapshotChunks.
	Snapshot []byte `json:"snapshot,omitempty"`
	// SnapshotChunks is the snapshot as applied: one KindSnapshot record
	// or every KindSnapshotChunk record of one answer, in order.
	SnapshotChunks [][]byte `json:"snapshot_chunks,omitempty"`
	Deployments    [][]byte `json:"deployments,omitempty"`
}

// State returns the View's persistable state. Revision never runs ahead of
// the deployments it is saved with.
func (v *View) State() State {
	v.depsMu.Lock()
	defer v.depsMu.Unlock()
	s := State{Revision: v.applied.Load(), SnapshotChunks: v.snapshot}
	for _, w := range v.depWires {
		s.Deployments = append(s.Deployments, w)
	}
	return s
}

// Restore loads persisted state into an empty View.
func (v *View) Restore(s State) error {
	chunks := s.SnapshotChunks
	if len(chunks) == 0 && s.Snapshot != nil {
		chunks = [][]byte{s.Snapshot}
	}
	snapRev, snapDeps, snapTime, err := v.openSnapshot(chunks)
	if err != nil {
		return fmt.Errorf("restoring snapshot: %w", err)
	}
	if snapRev > s.Revision {
		return fmt.Errorf("restoring snapshot: %w", event.ErrMalformed)
	}
	type restored struct {
		*event.Record
		wire []byte
	}
	recs := make([]restored, 0, len(s.Deployments))
	for _, w := range s.Deployments {
		rec, err := v.open(w)
		if err != nil {
			return fmt.Errorf("restoring deployment: %w", err)
		}
		if rec.Kind != event.KindDeployment || rec.Deployment == nil || rec.Revision > s.Revision {
			return fmt.Errorf("restoring deployment: %w", event.ErrMalformed)
		}
		recs = append(recs, restored{rec, w}) // the wire travels with its record through the sort
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Revision < recs[j].Revision })

	v.depsMu.Lock()
	defer v.depsMu.Unlock()
	deps := NewDeployments(snapDeps, snapRev)
	for _, rec := range recs {
		if rec.Revision > snapRev {
			deps = deps.with(rec.Deployment, rec.Revision)
			v.depWires[rec.Deployment.ID] = rec.wire
		}
	}
	v.deps.Store(deps)
	v.snapshot = chunks
	v.depFloor = snapRev
	// The View restarts knowing nothing about which keys changed before
	// s.Revision (generations are not persisted), so every answer read
	// before it may predate a change already applied, a deletion say: a
	// replayed lookup reply recorded then would bring the key back. The
	// restored revision is the floor, as after a snapshot.
	v.floor.Store(max(v.floor.Load(), s.Revision))
	v.negFloor.Store(max(v.negFloor.Load(), s.Revision))
	v.applied.Store(s.Revision)
	times := []time.Time{snapTime}
	for _, r := range recs {
		times = append(times, r.Time)
	}
	v.restoredFrom(times...) // as stale as the newest signed record in it
	return nil
}

// SaveState writes s to path atomically: a crash leaves the old file or the
// new one, never half of either.
func SaveState(path string, s State) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding edge state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return fmt.Errorf("saving edge state: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("saving edge state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("saving edge state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("saving edge state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("saving edge state: %w", err)
	}
	return nil
}

// LoadState reads state saved by SaveState; ok is false when there is none.
func LoadState(path string) (s State, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, fmt.Errorf("loading edge state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, false, fmt.Errorf("loading edge state %s: %w", path, err)
	}
	return s, true, nil
}
