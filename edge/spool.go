package edge

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// The usage spool holds every usage record from the moment the edge takes
// it until JetStream acknowledged it (write-ahead: the healthy path goes
// through it too, so that a crash at any moment loses only what the last
// fsync did not cover). On disk it is a directory of segment files
// <seq>.usage, appended to in order, each record one frame:
//
//	[4 bytes big-endian payload length][4 bytes CRC-32C of payload][payload: the record's JSON]
//
// A frame that is short, longer than maxUsageFrame, or whose checksum does
// not match (a torn tail after a crash, a bad disk) ends what is read of
// its segment: the segment is cut there at open, and the record is dropped
// and counted as corrupt, never half-published. Segments written before a
// start are only read; each start appends to a new one, so a segment's
// bytes never change once a later one exists and an acknowledgement
// position (the file "acked": segment and offset) can never point past
// records written later. That position is saved at every sync without
// fsync: losing it re-publishes records, which the stream (Nats-Msg-Id)
// and the origin (the record id) deduplicate.
//
// The disk is read back only for what the publisher fell behind on: the
// records this process appended last (up to usageTailBytes) are kept in
// memory as they were written, and peek hands those out instead of
// reading and decoding their frames again. So with NATS up a record costs
// one write (shared by its batch) and no read; what was spooled while
// NATS was down, beyond that tail, or by an earlier run, is read from
// disk, checksums checked.

const (
	usageFrameHeader = 8
	// maxUsageFrame bounds one record: a usage record is a few hundred
	// bytes of JSON; a length beyond this is garbage, not a record.
	maxUsageFrame = 64 << 10
	usageSegExt   = ".usage"
	usageAckFile  = "acked"
	// usagePeekBytes bounds what one peek opens and reads past its records.
	usagePeekBytes = 1 << 20
	// usageTailBytes bounds the records kept in memory after they were
	// written (diskSpool.tail), at most the spool's bound.
	usageTailBytes = 4 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// spooled is one record waiting in the spool: its id (the Nats-Msg-Id),
// its JSON, and (disk) where it ends, for ack.
type spooled struct {
	id   string
	data []byte
	seg  uint64
	end  int64
}

// spool is the bounded store of records not yet acknowledged. append and
// sync are called by one goroutine (the writer), peek and ack by another
// (the publisher); close by neither, once both have stopped.
type spool interface {
	// append stores records in order and returns how many it took: the
	// first n, the rest did not fit under the bound (err nil) or could not
	// be written (err).
	append(recs []spooled) (n int, err error)
	// sync makes what append took survive a machine crash (fsync) and
	// saves the acknowledgement position.
	sync() error
	// peek returns up to max of the oldest records not yet acknowledged,
	// in order, and how many records it found corrupt and skipped.
	peek(max int) (recs []spooled, corrupt int, err error)
	// ack forgets recs, a prefix of what peek last returned.
	ack(recs []spooled) error
	// depth reports the records waiting and the bytes they take.
	depth() (records, bytes int64)
	persistent() bool
	close() error
}

// frameSize is what a record takes in the spool (and counts against its
// bound), on disk or in memory.
func frameSize(data []byte) int64 { return usageFrameHeader + int64(len(data)) }

// recordID reads a record's id from its JSON: the writer puts it first,
// so usually without a JSON decoder.
func recordID(data []byte) (string, bool) {
	const head = `{"id":"`
	if len(data) > len(head) && string(data[:len(head)]) == head {
		rest := data[len(head):]
		for i, c := range rest {
			if c == '"' {
				if i == 0 {
					return "", false
				}
				return string(rest[:i]), true
			}
			if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
				break // escaped or not plain ASCII: ask the decoder
			}
		}
	}
	var r struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(data, &r) != nil || r.ID == "" {
		return "", false
	}
	return r.ID, true
}

// memSpool is the spool of an edge without a data dir: bounded the same
// way, lost with the process.
type memSpool struct {
	mu    sync.Mutex
	bound int64
	recs  []spooled
	bytes int64
}

func newMemSpool(bound int64) *memSpool { return &memSpool{bound: bound} }

func (m *memSpool) append(recs []spooled) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, r := range recs {
		sz := frameSize(r.data)
		if m.bytes+sz > m.bound {
			return i, nil
		}
		m.recs = append(m.recs, r)
		m.bytes += sz
	}
	return len(recs), nil
}

func (m *memSpool) sync() error { return nil }

func (m *memSpool) peek(max int) ([]spooled, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// The records are never changed once appended (append writes past
	// them, ack reslices), so they are shared, not copied.
	n := min(max, len(m.recs))
	return m.recs[:n:n], 0, nil
}

func (m *memSpool) ack(recs []spooled) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range recs[:min(len(recs), len(m.recs))] {
		m.bytes -= frameSize(r.data)
	}
	// Compact: the slice's head is dropped, its array reused when empty.
	m.recs = m.recs[min(len(recs), len(m.recs)):]
	if len(m.recs) == 0 {
		m.recs = nil
	}
	return nil
}

func (m *memSpool) depth() (int64, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.recs)), m.bytes
}

func (m *memSpool) persistent() bool { return false }

func (m *memSpool) close() error { return nil }

// segment is one spool file.
type segment struct {
	seq     uint64
	size    int64 // valid bytes: frames end here
	records int64 // frames in it
	acked   int64 // of those, acknowledged (only the first segment has any)
	r       *os.File
}

// diskSpool is the spool under <DataDir>/usage.
type diskSpool struct {
	dir    string
	bound  int64 // on the bytes of records waiting
	segMax int64 // a segment past this size is closed and a new one begun
	log    *slog.Logger

	mu      sync.Mutex
	segs    []*segment // oldest first; the last is the one appended to
	w       *os.File   // the last segment, open for appending
	rd      int64      // read position in segs[0]: everything before is acknowledged
	records int64      // waiting
	bytes   int64      // of the records waiting
	dirty   bool       // written since the last fsync
	broken  bool       // a failed write could not be undone: append to a new segment
	ackSeg  uint64     // the position last saved to the "acked" file
	ackOff  int64
	wbuf    []byte // append's frames, reused

	// tail holds the records appended last, from tail[head] on, in order,
	// with their positions, at most tailMax bytes of them (frameSize), so
	// that peek need not read them back; ack drops those acknowledged.
	tail      []spooled
	head      int
	tailBytes int64
	tailMax   int64

	// The publisher's (peek's) buffers, reused: what peek returns is
	// valid until the next peek.
	out []spooled
	br  *bufio.Reader
}

// openDiskSpool opens (creating) the spool in dir and reads what a previous
// run left: the records not yet acknowledged wait again, in order; a torn
// or corrupt record ends its segment and is counted in corrupt.
func openDiskSpool(dir string, bound int64, log *slog.Logger) (_ *diskSpool, corrupt int, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("usage spool: %w", err)
	}
	s := &diskSpool{dir: dir, bound: bound, log: log, segMax: min(max(bound/16, 4<<10), 16<<20),
		tailMax: min(bound, usageTailBytes)}
	seqs, err := s.listSegments()
	if err != nil {
		return nil, 0, err
	}
	ackSeg, ackOff := s.readAck()
	var ackedTo int64 // the read position in segment ackSeg
	for _, seq := range seqs {
		path := s.segPath(seq)
		if seq < ackSeg { // every record in it was acknowledged
			_ = os.Remove(path)
			continue
		}
		seg, bad, err := s.scan(seq)
		if err != nil {
			return nil, 0, err
		}
		corrupt += bad
		if seq == ackSeg {
			// Skip what was acknowledged (whole frames up to ackOff; a
			// position past what survived, as after a machine crash lost
			// unsynced bytes, acknowledges everything there is).
			if ackedTo, err = s.skipAcked(seg, ackOff); err != nil {
				return nil, 0, err
			}
		}
		if seg.acked == seg.records {
			_ = os.Remove(path)
			continue
		}
		s.segs = append(s.segs, seg)
		s.records += seg.records - seg.acked
		s.bytes += seg.size
	}
	if len(s.segs) > 0 && s.segs[0].seq == ackSeg {
		s.rd = ackedTo
		s.bytes -= s.rd
	}
	// Numbers only grow, past the saved position too: a segment numbered
	// below it would be taken for acknowledged at the next start.
	next := ackSeg + 1
	if len(seqs) > 0 {
		next = max(next, seqs[len(seqs)-1]+1)
	}
	if err := s.newSegment(next); err != nil {
		return nil, 0, err
	}
	s.ackSeg, s.ackOff = s.segs[0].seq, s.rd
	s.saveAck()
	return s, corrupt, nil
}

func (s *diskSpool) segPath(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", seq, usageSegExt))
}

func (s *diskSpool) listSegments() ([]uint64, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	var seqs []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), usageSegExt)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if seq, err := strconv.ParseUint(name, 10, 64); err == nil {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

// readAck returns the saved acknowledgement position; none (or an
// unreadable one) is the start: at worst records are published again.
func (s *diskSpool) readAck() (uint64, int64) {
	b, err := os.ReadFile(filepath.Join(s.dir, usageAckFile))
	if err != nil {
		return 0, 0
	}
	var seq uint64
	var off int64
	if _, err := fmt.Sscanf(string(b), "%d %d\n", &seq, &off); err != nil || off < 0 {
		return 0, 0
	}
	return seq, off
}

// saveAck writes the acknowledgement position (write and rename, no
// fsync: an old one only means duplicates). Called with mu held or
// before the spool is shared.
func (s *diskSpool) saveAck() {
	path := filepath.Join(s.dir, usageAckFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", s.ackSeg, s.ackOff), 0o600); err == nil {
		err = os.Rename(tmp, path)
		if err == nil {
			return
		}
	}
	// Not fatal: the records are kept; only duplicates follow.
}

// scan reads segment seq, validating every frame, and cuts it after the
// last good one.
func (s *diskSpool) scan(seq uint64) (*segment, int, error) {
	path := s.segPath(seq)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("usage spool: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("usage spool: %w", err)
	}
	seg := &segment{seq: seq}
	br := bufio.NewReaderSize(f, 64<<10)
	var payload []byte
	for {
		var ok bool
		payload, _, ok, _ = readFrame(br, payload)
		if !ok {
			break
		}
		seg.size += frameSize(payload)
		seg.records++
	}
	bad := 0
	if seg.size < st.Size() {
		bad = 1
		s.log.Warn("usage spool: torn or corrupt record dropped", "segment", filepath.Base(path),
			"at", seg.size, "bytes_dropped", st.Size()-seg.size)
		if err := f.Truncate(seg.size); err != nil {
			return nil, 0, fmt.Errorf("usage spool: cutting a torn record: %w", err)
		}
	}
	return seg, bad, nil
}

// readFrame reads one frame into buf and returns its payload and record
// id. ok is false at the end, and for a torn or corrupt frame; eof tells
// the end (exactly at a frame boundary) from those.
func readFrame(r io.Reader, buf []byte) (payload []byte, id string, ok, eof bool) {
	var h [usageFrameHeader]byte
	if n, err := io.ReadFull(r, h[:]); err != nil {
		return buf, "", false, n == 0 && err == io.EOF
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if n == 0 || n > maxUsageFrame {
		return buf, "", false, false
	}
	buf = slices.Grow(buf[:0], int(n))[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return buf, "", false, false
	}
	if crc32.Checksum(buf, castagnoli) != binary.BigEndian.Uint32(h[4:8]) {
		return buf, "", false, false
	}
	id, ok = recordID(buf)
	return buf, id, ok, false
}

// skipAcked counts as acknowledged the frames of seg that end at or
// before off, and returns where the first other one starts.
func (s *diskSpool) skipAcked(seg *segment, off int64) (int64, error) {
	f, err := os.Open(s.segPath(seg.seq))
	if err != nil {
		return 0, fmt.Errorf("usage spool: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, seg.size), 64<<10)
	var pos int64
	var payload []byte
	for pos < seg.size {
		var ok bool
		payload, _, ok, _ = readFrame(br, payload)
		if !ok || pos+frameSize(payload) > off {
			break
		}
		pos += frameSize(payload)
		seg.acked++
	}
	return pos, nil
}

// newSegment begins segment seq and appends to it from now on.
func (s *diskSpool) newSegment(seq uint64) error {
	f, err := os.OpenFile(s.segPath(seq), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("usage spool: %w", err)
	}
	// The new file's name must survive a crash with its contents.
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	if s.w != nil {
		_ = s.w.Sync()
		_ = s.w.Close()
	}
	s.w = f
	s.segs = append(s.segs, &segment{seq: seq})
	return nil
}

func (s *diskSpool) last() *segment { return s.segs[len(s.segs)-1] }

func (s *diskSpool) append(recs []spooled) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return 0, errors.New("usage spool closed")
	}
	buf := s.wbuf[:0]
	n := 0
	for _, r := range recs {
		sz := frameSize(r.data)
		if s.bytes+int64(len(buf))+sz > s.bound {
			break
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(r.data)))
		buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(r.data, castagnoli))
		buf = append(buf, r.data...)
		n++
	}
	if cap(buf) <= 4*usagePeekBytes { // a huge batch's buffer is not kept
		s.wbuf = buf[:0]
	}
	if n == 0 {
		return 0, nil
	}
	if seg := s.last(); s.broken || (seg.size > 0 && seg.size+int64(len(buf)) > s.segMax) {
		if err := s.rotate(); err != nil {
			return 0, err
		}
		s.broken = false
	}
	seg := s.last()
	if _, err := s.w.Write(buf); err != nil {
		// A partial write (a full disk) is undone, so that the next append
		// lands where the segment's valid size says; if it cannot be, the
		// next append goes to a new segment, and a restart cuts the
		// garbage as a torn tail.
		if terr := s.w.Truncate(seg.size); terr != nil {
			s.broken = true
		}
		return 0, fmt.Errorf("usage spool: %w", err)
	}
	end := seg.size
	for _, r := range recs[:n] {
		end += frameSize(r.data)
		s.pushTail(spooled{id: r.id, data: r.data, seg: seg.seq, end: end})
	}
	seg.size += int64(len(buf))
	seg.records += int64(n)
	s.records += int64(n)
	s.bytes += int64(len(buf))
	s.dirty = true
	return n, nil
}

// pushTail keeps r (just written) in memory for peek, the oldest kept
// ones giving way beyond tailMax (they are read from disk). With mu held.
func (s *diskSpool) pushTail(r spooled) {
	if s.head > 0 && s.head >= len(s.tail)/2 && len(s.tail) == cap(s.tail) {
		// Room from the dropped head before append grows the array.
		n := copy(s.tail, s.tail[s.head:])
		clear(s.tail[n:])
		s.tail, s.head = s.tail[:n], 0
	}
	s.tail = append(s.tail, r)
	s.tailBytes += frameSize(r.data)
	for s.tailBytes > s.tailMax && s.head < len(s.tail) {
		s.popTail()
	}
}

// popTail forgets the oldest record of the tail. With mu held.
func (s *diskSpool) popTail() {
	s.tailBytes -= frameSize(s.tail[s.head].data)
	s.tail[s.head] = spooled{} // its JSON is not kept alive
	s.head++
	if s.head == len(s.tail) {
		s.tail, s.head = s.tail[:0], 0
	}
}

// trimTail forgets the tail's records before the read position (all
// acknowledged, or dropped as corrupt). With mu held.
func (s *diskSpool) trimTail() {
	for s.head < len(s.tail) {
		t := &s.tail[s.head]
		if len(s.segs) > 0 && (t.seg > s.segs[0].seq || (t.seg == s.segs[0].seq && t.end > s.rd)) {
			return
		}
		s.popTail()
	}
}

// fromTail returns up to maxRecs records of the tail from the read
// position on, if the tail holds the record there. With mu held.
func (s *diskSpool) fromTail(maxRecs int) ([]spooled, bool) {
	// The read position: the first record not yet read back.
	from := s.rd
	var seq uint64
	found := false
	for _, seg := range s.segs {
		if from < seg.size {
			seq, found = seg.seq, true
			break
		}
		from = 0
	}
	if !found {
		return nil, false
	}
	live := s.tail[s.head:]
	i := sort.Search(len(live), func(i int) bool {
		return live[i].seg > seq || (live[i].seg == seq && live[i].end > from)
	})
	if i == len(live) || live[i].seg != seq || live[i].end-frameSize(live[i].data) != from {
		return nil, false
	}
	n := min(maxRecs, len(live)-i)
	s.out = append(s.out[:0], live[i:i+n]...)
	return s.out, true
}

// rotate closes the current segment for appending and begins the next.
// It deletes nothing: only the publisher's goroutine (ack, peek) deletes
// segments, so that none goes while peek reads it.
func (s *diskSpool) rotate() error {
	if err := s.newSegment(s.last().seq + 1); err != nil {
		return err
	}
	s.dirty = false // newSegment synced the old one
	return nil
}

// dropAcked deletes leading segments whose records are all acknowledged,
// never the one appended to. Publisher's goroutine only.
func (s *diskSpool) dropAcked() {
	for len(s.segs) > 1 && s.rd >= s.segs[0].size {
		s.dropFirst()
	}
}

// dropFirst deletes segs[0]; its records still waiting are forgotten (the
// caller counted them). Publisher's goroutine only, with mu held.
func (s *diskSpool) dropFirst() {
	seg := s.segs[0]
	if seg.r != nil {
		_ = seg.r.Close()
	}
	_ = os.Remove(s.segPath(seg.seq))
	s.records -= seg.records - seg.acked
	s.bytes -= seg.size - s.rd
	s.segs = s.segs[1:]
	s.rd = 0
}

func (s *diskSpool) sync() error {
	s.mu.Lock()
	w, dirty := s.w, s.dirty
	s.dirty = false
	if len(s.segs) > 0 && (s.ackSeg != s.segs[0].seq || s.ackOff != s.rd) {
		s.ackSeg, s.ackOff = s.segs[0].seq, s.rd
		s.saveAck()
	}
	s.mu.Unlock()
	if !dirty || w == nil {
		return nil
	}
	// Outside the lock: the publisher goes on meanwhile. A segment closed
	// meanwhile by rotate was synced there.
	if err := w.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("usage spool: %w", err)
	}
	return nil
}

func (s *diskSpool) peek(maxRecs int) ([]spooled, int, error) {
	s.mu.Lock()
	clear(s.out) // the last peek's records are the caller's no more
	s.out = s.out[:0]
	if out, ok := s.fromTail(maxRecs); ok {
		s.mu.Unlock()
		return out, 0, nil
	}
	type part struct {
		seg      *segment
		r        *os.File
		from, to int64
	}
	var parts []part
	from, total := s.rd, int64(0)
	for _, seg := range s.segs {
		if total >= usagePeekBytes { // enough for a window; the rest waits (and stays closed)
			break
		}
		if from < seg.size {
			total += seg.size - from
			if seg.r == nil {
				f, err := os.Open(s.segPath(seg.seq))
				if err != nil {
					s.mu.Unlock()
					return nil, 0, fmt.Errorf("usage spool: %w", err)
				}
				seg.r = f
			}
			parts = append(parts, part{seg, seg.r, from, seg.size})
		}
		from = 0
	}
	s.mu.Unlock()
	// The bytes read were written before the sizes were taken and are
	// never changed; only ack and peek (the caller's own goroutine) delete
	// files.
	out := s.out[:0]
	defer func() { s.out = out }()
	if s.br == nil {
		s.br = bufio.NewReaderSize(nil, 64<<10)
	}
	for _, p := range parts {
		br := s.br
		br.Reset(io.NewSectionReader(p.r, p.from, p.to-p.from))
		pos := p.from
		for pos < p.to && len(out) < maxRecs {
			payload, id, ok, _ := readFrame(br, nil)
			if !ok {
				if len(out) > 0 {
					return out, 0, nil // the records before it go first
				}
				return nil, s.skipCorrupt(p.seg), nil
			}
			pos += frameSize(payload)
			out = append(out, spooled{id: id, data: payload, seg: p.seg.seq, end: pos})
		}
		if len(out) >= maxRecs {
			break
		}
	}
	return out, 0, nil
}

// skipCorrupt gives up the rest of seg (the disk changed what was
// written): its records still waiting are dropped, and returned to be
// counted.
func (s *diskSpool) skipCorrupt(seg *segment) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.segs) == 0 || s.segs[0] != seg {
		return 0
	}
	lost := seg.records - seg.acked
	s.log.Warn("usage spool: corrupt record, dropping the rest of its segment", "segment", filepath.Base(s.segPath(seg.seq)), "records", lost)
	if len(s.segs) == 1 {
		_ = s.rotate()
	}
	s.dropFirst()
	return int(lost)
}

func (s *diskSpool) ack(recs []spooled) error {
	if len(recs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		for len(s.segs) > 1 && s.segs[0].seq != r.seg {
			s.dropFirst()
		}
		if s.segs[0].seq != r.seg || r.end <= s.rd {
			continue // gone already (skipped as corrupt)
		}
		s.segs[0].acked++
		s.records--
		s.bytes -= r.end - s.rd
		s.rd = r.end
	}
	s.dropAcked()
	s.trimTail()
	return nil
}

func (s *diskSpool) depth() (int64, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.records, s.bytes
}

func (s *diskSpool) persistent() bool { return true }

// close syncs, saves the acknowledgement position and closes the files;
// what waits is read again by the next start.
func (s *diskSpool) close() error {
	err := s.sync()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w != nil {
		if cerr := s.w.Close(); err == nil && cerr != nil {
			err = cerr
		}
		s.w = nil
	}
	for _, seg := range s.segs {
		if seg.r != nil {
			_ = seg.r.Close()
			seg.r = nil
		}
	}
	// A last, empty segment is not kept.
	if seg := s.last(); seg.size == 0 {
		_ = os.Remove(s.segPath(seg.seq))
	}
	return err
}
