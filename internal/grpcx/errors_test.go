package grpcx_test

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"

	"github.com/telemesh/telemesh/internal/grpcx"
)

func TestCodeOfPostgresErrors(t *testing.T) {
	tests := []struct {
		name string
		code string
		want codes.Code
	}{
		// What every session gets from a fast restart, a failover or
		// pg_terminate_backend: the work may succeed on a new connection.
		{"admin shutdown", "57P01", codes.Unavailable},
		{"crash shutdown", "57P02", codes.Unavailable},
		{"cannot connect now", "57P03", codes.Unavailable},
		{"idle session timeout", "57P05", codes.Unavailable},
		{"connection failure", "08006", codes.Unavailable},
		// A statement Postgres refuses stays refused.
		{"unique violation", "23505", codes.Internal},
		{"database dropped", "57P04", codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fmt.Errorf("persist 3 messages: %w", &pgconn.PgError{Severity: "FATAL", Code: tt.code})
			if got := grpcx.Code(err); got != tt.want {
				t.Errorf("Code(SQLSTATE %s) = %v, want %v", tt.code, got, tt.want)
			}
		})
	}
}
