// Package bound keeps what a device sent within what Postgres can always
// store: text a column or an index accepts, and payloads within the
// stored-payload limit. Whatever a device sends, a bounded value never
// makes a write fail, so one message's content cannot fail its batch.
package bound

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxKeyBytes bounds a stored dedupe key. A btree index entry holds at most
// about 2,700 bytes, and uncompressible text longer than that makes the
// insert fail; keys the gateway builds are shorter (a subject of at most
// 512 bytes and a message id of at most 256).
const MaxKeyBytes = 1024

// MaxReasonBytes bounds a reason recorded for a message that could not be
// processed, which may quote what the device sent.
const MaxReasonBytes = 4096

// hashMark ends a value that was cut: the SHA-256 of the whole original,
// so two values that share their first bytes still differ when cut.
const hashMark = "…sha256:"

// hashedLen is the length of what a cut value ends with.
const hashedLen = len(hashMark) + sha256.Size*2

// Text returns s as Postgres text can hold it, in at most max bytes:
// invalid UTF-8 and NUL become U+FFFD, and text longer than max is cut at a
// character boundary and ends with "…sha256:" and the hex SHA-256 of the
// original bytes. Text that is valid and fits is returned unchanged.
func Text(s string, max int) string {
	clean := Clean(s)
	if len(clean) <= max {
		return clean
	}
	return cut(clean, max) + Hash(s)
}

// Key returns s fit for a unique or indexed column of at most max bytes.
// Unlike [Text] it never maps two different values to one: a value that had
// to be cleaned or cut ends with the SHA-256 of its original bytes, so only
// an identical value gives an identical key.
func Key(s string, max int) string {
	clean := Clean(s)
	if len(s) <= max && clean == s {
		return s
	}
	return cut(clean, max) + Hash(s)
}

// Hash returns what [Text] and [Key] end a cut value with: "…sha256:" and
// the hex SHA-256 of s.
func Hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hashMark + hex.EncodeToString(sum[:])
}

// Clean replaces invalid UTF-8 and NUL, which Postgres text refuses, with
// U+FFFD. Text without either is returned unchanged without copying.
func Clean(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// cut returns the valid UTF-8 text s, or its longest prefix that leaves
// room for the hash within max bytes, ending on a character boundary.
func cut(s string, max int) string {
	n := max - hashedLen
	if n <= 0 {
		return ""
	}
	if n >= len(s) {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Payload is a payload as it is stored under the stored-payload limit.
type Payload struct {
	// Kept is the whole payload, or its first bytes when it is longer than
	// the limit.
	Kept []byte
	// Size is the whole payload's length.
	Size int
	// SHA256 is the whole payload's SHA-256, set only when Kept is cut.
	SHA256 []byte
	// Limit is the stored-payload limit it was kept under.
	Limit int
}

// StorePayload returns what is stored of payload under limit: all of it
// when it fits, else its first limit bytes, its size and its SHA-256.
func StorePayload(payload []byte, limit int) Payload {
	p := Payload{Kept: payload, Size: len(payload), Limit: limit}
	if len(payload) > limit {
		sum := sha256.Sum256(payload)
		p.Kept, p.SHA256 = payload[:limit], sum[:]
	}
	return p
}

// Cut reports whether only the first bytes are kept.
func (p Payload) Cut() bool { return p.SHA256 != nil }

// Note says what was kept of a cut payload, for the message's reason; it is
// "" when the payload is kept whole.
func (p Payload) Note() string {
	if !p.Cut() {
		return ""
	}
	return fmt.Sprintf("payload of %d bytes exceeds the stored-payload limit %d; first %d bytes kept, sha256 %x",
		p.Size, p.Limit, len(p.Kept), p.SHA256)
}
