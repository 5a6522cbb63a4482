package pg

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url     string
		wantErr bool
	}{
		{url: "postgres://app:secret@127.0.0.1:5432/telemesh?sslmode=disable"},
		{url: "host=127.0.0.1 user=app dbname=telemesh"},
		{url: "postgres://app:secret@127.0.0.1:5432:99/x", wantErr: true},
		{url: "postgres://app:secret@[::1/x", wantErr: true},
		{url: "postgres://app:secret@host/db?sslmode=sometimes", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			_, err := ParseURL(tt.url)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}
