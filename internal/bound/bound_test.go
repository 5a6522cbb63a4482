package bound

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestText(t *testing.T) {
	long := strings.Repeat("a", 300)
	tests := []struct {
		name, in string
		max      int
		want     string
	}{
		{"fits", "meter-01", 256, "meter-01"},
		{"exactly at the limit", long[:256], 256, long[:256]},
		{"NUL and invalid UTF-8 replaced", "a\x00b\xffc", 256, "a\uFFFDb\uFFFDc"},
		{"one byte over is cut and hashed", long[:257], 256, long[:256-hashedLen] + Hash(long[:257])},
		{"cut on a character boundary", strings.Repeat("é", 200), 256, strings.Repeat("é", (256-hashedLen)/2) + Hash(strings.Repeat("é", 200))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Text(tt.in, tt.max)
			if got != tt.want {
				t.Errorf("Text(%.40q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
			}
			if len(got) > tt.max || !utf8.ValidString(got) || strings.IndexByte(got, 0) >= 0 {
				t.Errorf("Text(%.40q, %d) = %d bytes, valid %v", tt.in, tt.max, len(got), utf8.ValidString(got))
			}
		})
	}
}

func TestKeyNeverMergesDifferentValues(t *testing.T) {
	values := []string{"a\x00", "a\xff", "a\uFFFD", "a", strings.Repeat("x", 2000), strings.Repeat("x", 2001), strings.Repeat("x", 1024), strings.Repeat("x", 1025)}
	seen := map[string]string{}
	for _, v := range values {
		k := Key(v, MaxKeyBytes)
		if len(k) > MaxKeyBytes || Clean(k) != k {
			t.Errorf("Key(%.20q) = %d bytes, clean %v", v, len(k), Clean(k) == k)
		}
		if prev, ok := seen[k]; ok {
			t.Errorf("Key(%.20q) = Key(%.20q)", v, prev)
		}
		seen[k] = v
	}
	if k := Key("id:devices.meter-01.telemetry:m-1", MaxKeyBytes); k != "id:devices.meter-01.telemetry:m-1" {
		t.Errorf("a clean key that fits changed to %q", k)
	}
}

func TestStorePayload(t *testing.T) {
	small := []byte(`{"temp_c": 1}`)
	if p := StorePayload(small, 1024); p.Cut() || string(p.Kept) != string(small) || p.Note() != "" {
		t.Errorf("a payload within the limit: %+v", p)
	}
	big := []byte(strings.Repeat("z", 5000))
	p := StorePayload(big, 1024)
	sum := sha256.Sum256(big)
	want := fmt.Sprintf("payload of 5000 bytes exceeds the stored-payload limit 1024; first 1024 bytes kept, sha256 %x", sum)
	if !p.Cut() || len(p.Kept) != 1024 || p.Size != 5000 || string(p.SHA256) != string(sum[:]) || p.Note() != want {
		t.Errorf("StorePayload(5000 bytes, 1024) = %d bytes kept, size %d, note %q", len(p.Kept), p.Size, p.Note())
	}
}
