package grpcx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"regexp"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
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
// An internal error becomes an [*InternalError]: callers get one line with
// its error id and nothing of the cause, while the cause stays in the error
// for the server's log.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	var ie *InternalError
	if errors.As(err, &ie) {
		return ie
	}
	c := Code(err)
	if c == codes.Internal {
		return NewInternalError(err)
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(c, err.Error())
}

// InternalError is a failure the caller can do nothing about but report:
// its status carries only the error id, and the server logs the cause under
// the same id, so an operator who reads the id where the failure ended (a
// dead letter, a caller's log line) finds the line that says what happened.
type InternalError struct {
	// ID names the failure in the logs of every stage it crossed.
	ID    string
	cause error
}

// NewInternalError wraps cause with an error id: the one a stage further
// down the chain already gave it (it logged the cause; this stage logs its
// own context under the same id), else a new one.
func NewInternalError(cause error) *InternalError {
	id := ErrorID(cause)
	if id == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	return &InternalError{ID: id, cause: cause}
}

// Error returns the id and the whole cause, for the server's log.
func (e *InternalError) Error() string {
	return "error id " + e.ID + ": " + e.cause.Error()
}

// Unwrap returns the cause.
func (e *InternalError) Unwrap() error { return e.cause }

// GRPCStatus is what the caller receives: Internal and the error id only.
func (e *InternalError) GRPCStatus() *status.Status {
	return status.New(codes.Internal, errorIDPrefix+e.ID)
}

// errorIDPrefix is how a status names its error id; [ErrorID] reads it back
// from a status that crossed a process boundary.
const errorIDPrefix = "internal error; error id "

var errorIDPattern = regexp.MustCompile(regexp.QuoteMeta(errorIDPrefix) + `([0-9a-f]{16})`)

// ErrorID returns the error id err carries, from this process or from a
// status another stage returned, or "" when it carries none.
func ErrorID(err error) string {
	if err == nil {
		return ""
	}
	var ie *InternalError
	if errors.As(err, &ie) {
		return ie.ID
	}
	return ErrorIDIn(err.Error())
}

// ErrorIDIn returns the error id a text names (a reason that quotes a
// status), or "".
func ErrorIDIn(text string) string {
	if m := errorIDPattern.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// errorFields adds the error id to the log line of a failed call, so the
// line is found by the id the caller reports.
func errorFields(err error) logging.Fields {
	if id := ErrorID(err); id != "" {
		return logging.Fields{"error_id", id}
	}
	return nil
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
