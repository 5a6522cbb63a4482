package pg

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestRefused(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "54000", Message: "index row size 4112 exceeds btree version 4 maximum 2704"}, true},
		{fmt.Errorf("write 3 stage logs: %w", &pgconn.PgError{Code: "23514"}), true},
		{&pgconn.PgError{Code: "22021"}, true},
		{&pgconn.PgError{Code: "08006"}, false},
		{&pgconn.PgError{Code: "42501"}, false},
		{&pgconn.PgError{Code: "57P01"}, false},
		{errors.New("connection reset"), false},
		{nil, false},
	} {
		if got := Refused(tt.err); got != tt.want {
			t.Errorf("Refused(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	err := fmt.Errorf("copy: %w", &pgconn.PgError{Code: "23514", Message: `new row violates check constraint "c"`})
	if got := Reason(err); got != `new row violates check constraint "c"` {
		t.Errorf("Reason = %q", got)
	}
}
