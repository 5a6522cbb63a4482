package grpcx

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain packages do not import gRPC. They say what kind of failure an error
// is through these behaviours, and errorMappingInterceptor turns the behaviour
// into a code in this one place.
type (
	invalidInput interface{ InvalidInput() bool }
	notFound     interface{ NotFound() bool }
	temporary    interface{ Temporary() bool }
	exhausted    interface{ ResourceExhausted() bool }
)

// Code returns the gRPC code for err.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var grpcStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &grpcStatus) {
		return grpcStatus.GRPCStatus().Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case is[invalidInput](err, func(e invalidInput) bool { return e.InvalidInput() }):
		return codes.InvalidArgument
	case is[notFound](err, func(e notFound) bool { return e.NotFound() }):
		return codes.NotFound
	case is[exhausted](err, func(e exhausted) bool { return e.ResourceExhausted() }):
		return codes.ResourceExhausted
	case is[temporary](err, func(e temporary) bool { return e.Temporary() }):
		return codes.Unavailable
	case pgconn.SafeToRetry(err) || pgconn.Timeout(err) || isConnError(err) || sessionEnded(err):
		return codes.Unavailable
	}
	return codes.Internal
}

// sessionEnded reports whether Postgres ended the session or refused it for
// now: a connection exception (class 08), or the server shutting down, a
// fast restart, a failover or pg_terminate_backend (57P01, 57P02, 57P03,
// 57P05). The work may succeed on a new connection, and every stage is
// idempotent on the dedupe key; as Internal, the gateway would take it for
// a bad message and dead-letter a healthy one.
func sessionEnded(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "57P01", "57P02", "57P03", "57P05":
		return true
	}
	return strings.HasPrefix(pgErr.Code, "08")
}

// ToStatus converts err into a gRPC status error with the code from [Code].
// Internal errors carry only a generic message: their detail is logged by the
// server, not sent to callers.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	c := Code(err)
	if c == codes.Internal {
		return status.Error(c, "internal error")
	}
	return status.Error(c, err.Error())
}

func is[T any](err error, pred func(T) bool) bool {
	var target T
	return errors.As(err, &target) && pred(target)
}

func isConnError(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connectErr *pgconn.ConnectError
	return errors.As(err, &connectErr)
}

func errorMappingInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			return nil, ToStatus(err)
		}
		return resp, nil
	}
}
