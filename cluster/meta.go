package cluster

import (
	"encoding/binary"

	"github.com/hashicorp/memberlist"
)

// Info is what a node tells its peers about itself besides its applied
// revision. It travels in memberlist's node metadata, which is limited to
// memberlist.MetaMaxSize (512) bytes: fields over their limits (ID and
// Address 128 bytes each, Site 64) are not sent at all, rather than sent
// cut, and then neither is the signed presence.
type Info struct {
	// ID is the edge's id, as it reports itself to the origin.
	ID string `json:"id,omitempty"`
	// Site is the edge's site.
	Site string `json:"site,omitempty"`
	// Address is the edge's inference-facing address.
	Address string `json:"address,omitempty"`
	// NATS says the node is connected to NATS; peers that are publish the
	// edge heartbeats of those that are not.
	NATS bool `json:"nats_connected"`
	// SignedAt (unix ms) and Signature are the node's signed presence over
	// (ID, applied revision, SignedAt) (see Config.Sign); a peer relaying
	// this node's heartbeat passes them on. Zero and nil when not signed.
	SignedAt  int64  `json:"signed_at,omitempty"`
	Signature []byte `json:"-"`
}

// Limits on Info's fields in node metadata.
const (
	maxInfoID   = 128
	maxInfoSite = 64
	maxInfoAddr = 128
	metaSigSize = 64 // an Ed25519 signature
)

// Node metadata layout. The first 8 bytes are the applied revision (what
// the first version of this package sent, and still reads); then a version
// byte, a flags byte and three length-prefixed strings (version 1); version
// 2 appends, when metaFlagSig is set, the signed presence: SignedAt (8
// bytes) and the signature (64). Version 1 metadata still reads, unsigned.
const (
	metaVersion   = 2
	metaFlagNATS  = 1 << 0
	metaFlagNoTxt = 1 << 1 // Info's strings were over their limits
	metaFlagSig   = 1 << 2 // a signed presence follows the strings
)

func encodeMeta(rev uint64, in Info) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 64), rev)
	flags := byte(0)
	if in.NATS {
		flags |= metaFlagNATS
	}
	fits := infoFits(in)
	if !fits {
		flags |= metaFlagNoTxt
	}
	signed := fits && len(in.Signature) == metaSigSize
	if signed {
		flags |= metaFlagSig
	}
	b = append(b, metaVersion, flags)
	if fits {
		for _, s := range []string{in.ID, in.Site, in.Address} {
			b = append(b, byte(len(s)))
			b = append(b, s...)
		}
	}
	if signed {
		b = binary.BigEndian.AppendUint64(b, uint64(in.SignedAt))
		b = append(b, in.Signature...)
	}
	if len(b) > memberlist.MetaMaxSize { // cannot happen with the limits above
		return b[:8]
	}
	return b
}

// decodeMeta reads node metadata; anything it cannot read is left zero.
func decodeMeta(meta []byte) (rev uint64, in Info) {
	if len(meta) < 8 {
		return 0, Info{}
	}
	rev = binary.BigEndian.Uint64(meta)
	if len(meta) < 10 || meta[8] < 1 || meta[8] > metaVersion {
		return rev, Info{}
	}
	flags := meta[9]
	in.NATS = flags&metaFlagNATS != 0
	b := meta[10:]
	var fields [3]string
	for i := range fields {
		if len(b) < 1 || int(b[0]) > len(b)-1 {
			return rev, Info{NATS: in.NATS}
		}
		fields[i], b = string(b[1:1+int(b[0])]), b[1+int(b[0]):]
	}
	in.ID, in.Site, in.Address = fields[0], fields[1], fields[2]
	if meta[8] >= 2 && flags&metaFlagSig != 0 && len(b) >= 8+metaSigSize {
		in.SignedAt = int64(binary.BigEndian.Uint64(b))
		in.Signature = append([]byte(nil), b[8:8+metaSigSize]...)
	}
	return rev, in
}

// infoFits reports whether in travels whole in node metadata.
func infoFits(in Info) bool {
	return len(in.ID) <= maxInfoID && len(in.Site) <= maxInfoSite && len(in.Address) <= maxInfoAddr
}
