// Package apikey owns the keymesh API-key format.
//
// A key is the fixed prefix "km_", 52 characters of lowercase base32 carrying
// 32 random bytes (256 bits), and 7 characters of base32 carrying a CRC-32 of
// those bytes: 62 ASCII characters in all. The checksum lets an edge refuse a
// mistyped or made-up string without any lookup; it is not a secret and gives
// no protection against forgery, which the 256 random bits do.
//
// Only the SHA-256 Hash of a key is ever stored or sent anywhere. Parse and
// HashOf do not allocate, so they are safe on the request hot path.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	// Prefix starts every key.
	Prefix = "km_"
	// Len is the length of every well-formed key.
	Len = len(Prefix) + bodyLen + sumLen
	// DisplayLen is how many leading characters of a key are shown in lists
	// (the Key's "prefix" field): enough to recognise it, far too few to use.
	DisplayLen = len(Prefix) + 8

	randomBytes = 32
	bodyLen     = 52 // base32 of 32 bytes, unpadded
	sumLen      = 7  // base32 of 4 bytes, unpadded
)

const alphabet = "abcdefghijklmnopqrstuvwxyz234567"

var (
	enc = base32.NewEncoding(alphabet).WithPadding(base32.NoPadding)
	// decodeMap maps an alphabet character to its 5-bit value, others to 0xff.
	decodeMap = func() (m [256]byte) {
		for i := range m {
			m[i] = 0xff
		}
		for i := 0; i < len(alphabet); i++ {
			m[alphabet[i]] = byte(i)
		}
		return m
	}()
)

// Errors returned by Parse. They say what is wrong without echoing the input.
var (
	ErrPrefix   = errors.New("api key: missing km_ prefix")
	ErrLength   = errors.New("api key: wrong length")
	ErrEncoding = errors.New("api key: invalid characters")
	ErrChecksum = errors.New("api key: checksum mismatch")
)

// Hash is the SHA-256 of a key's full text: the only form in which a key is
// stored, cached or sent over the network.
type Hash [sha256.Size]byte

// String returns the hash in lowercase hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Equal compares two hashes in constant time.
func (h Hash) Equal(o Hash) bool { return subtle.ConstantTimeCompare(h[:], o[:]) == 1 }

// MarshalText encodes the hash as hex, so it travels in JSON as a string.
func (h Hash) MarshalText() ([]byte, error) {
	out := make([]byte, hex.EncodedLen(len(h)))
	hex.Encode(out, h[:])
	return out, nil
}

// UnmarshalText decodes a hex hash.
func (h *Hash) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(h) {
		return fmt.Errorf("api key hash: want %d hex characters, got %d", 2*len(h), len(b))
	}
	_, err := hex.Decode(h[:], b)
	return err
}

// Generate returns a new random key.
func Generate() (string, error) {
	var raw [randomBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("generating api key: %w", err)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.ChecksumIEEE(raw[:]))
	out := make([]byte, Len)
	copy(out, Prefix)
	enc.Encode(out[len(Prefix):], raw[:])
	enc.Encode(out[len(Prefix)+bodyLen:], sum[:])
	return string(out), nil
}

// Parse checks that b is a well-formed key (prefix, length, alphabet,
// checksum) and returns its Hash. It does not allocate.
func Parse(b []byte) (Hash, error) {
	if len(b) < len(Prefix) || string(b[:len(Prefix)]) != Prefix {
		return Hash{}, ErrPrefix
	}
	if len(b) != Len {
		return Hash{}, ErrLength
	}
	var raw [randomBytes]byte
	if !decode(raw[:], b[len(Prefix):len(Prefix)+bodyLen]) {
		return Hash{}, ErrEncoding
	}
	var sum [4]byte
	if !decode(sum[:], b[len(Prefix)+bodyLen:]) {
		return Hash{}, ErrEncoding
	}
	if binary.BigEndian.Uint32(sum[:]) != checksum(&raw) {
		return Hash{}, ErrChecksum
	}
	return sha256.Sum256(b), nil
}

// ParseString is Parse for a string.
func ParseString(s string) (Hash, error) { return Parse([]byte(s)) }

// Display returns the leading characters of key shown in lists.
func Display(key string) string {
	if len(key) < DisplayLen {
		return key
	}
	return key[:DisplayLen]
}

var crcTable = crc32.MakeTable(crc32.IEEE)

// checksum is the CRC-32 (IEEE) of the key's random part, table-driven by
// hand: crc32.ChecksumIEEE would move raw to the heap (it is called through
// a function value), costing an allocation per parsed key.
func checksum(raw *[randomBytes]byte) uint32 {
	crc := ^uint32(0)
	for _, v := range raw {
		crc = crcTable[byte(crc)^v] ^ (crc >> 8)
	}
	return ^crc
}

// decode decodes unpadded base32 (alphabet) src into dst, which must be
// exactly long enough, and reports false for a character outside the
// alphabet or trailing bits that are not zero (a non-canonical encoding).
// Whole groups of 8 characters (5 bytes) go at once; the tail bit by bit.
func decode(dst, src []byte) bool {
	n := 0
	for len(src) >= 8 {
		c0, c1, c2, c3 := decodeMap[src[0]], decodeMap[src[1]], decodeMap[src[2]], decodeMap[src[3]]
		c4, c5, c6, c7 := decodeMap[src[4]], decodeMap[src[5]], decodeMap[src[6]], decodeMap[src[7]]
		if (c0|c1|c2|c3|c4|c5|c6|c7)&0xe0 != 0 {
			return false
		}
		v := uint64(c0)<<35 | uint64(c1)<<30 | uint64(c2)<<25 | uint64(c3)<<20 |
			uint64(c4)<<15 | uint64(c5)<<10 | uint64(c6)<<5 | uint64(c7)
		dst[n], dst[n+1], dst[n+2], dst[n+3], dst[n+4] = byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
		n += 5
		src = src[8:]
	}
	var acc uint64
	bits := 0
	for _, c := range src {
		v := decodeMap[c]
		if v == 0xff {
			return false
		}
		acc = acc<<5 | uint64(v)
		bits += 5
		if bits >= 8 {
			bits -= 8
			dst[n] = byte(acc >> bits)
			n++
		}
	}
	return acc&(1<<bits-1) == 0
}
