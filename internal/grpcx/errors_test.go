package grpcx_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

func TestInternalErrorCarriesOnlyItsID(t *testing.T) {
	cause := fmt.Errorf("persist 3 messages: %w", &pgconn.PgError{Code: "P0001", Message: "secret detail"})
	err := grpcx.ToStatus(cause)
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Internal {
		t.Fatalf("ToStatus = %v, want an Internal status", err)
	}
	id := grpcx.ErrorID(err)
	if len(id) != 16 {
		t.Fatalf("ErrorID = %q, want 16 hex digits", id)
	}
	if want := "internal error; error id " + id; st.Message() != want {
		t.Errorf("status message %q, want %q", st.Message(), want)
	}
	if !strings.Contains(err.Error(), "secret detail") {
		t.Errorf("Error() = %q, want the cause for the server's log", err.Error())
	}
	// The status crosses a hop as a plain status; the stage above wraps it
	// and keeps its id, so one id names the failure all the way up.
	received := status.Error(st.Code(), st.Message())
	up := grpcx.ToStatus(fmt.Errorf("deriver: %w", received))
	if got := grpcx.ErrorID(up); got != id {
		t.Errorf("id after a hop = %q, want %q", got, id)
	}
	if got := status.Convert(up).Message(); got != st.Message() {
		t.Errorf("message after a hop = %q, want %q", got, st.Message())
	}
	// A code a caller can act on keeps its message.
	if got := status.Convert(grpcx.ToStatus(context.DeadlineExceeded)); got.Code() != codes.DeadlineExceeded || grpcx.ErrorID(got.Err()) != "" {
		t.Errorf("deadline: %v", got)
	}
}
