// Package grpcx builds the gRPC servers and clients every stage uses, with
// one interceptor chain, one error-to-code mapping and one set of limits.
package grpcx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"buf.build/go/protovalidate"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	protovalidatemw "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/telemesh/telemesh/internal/tracing"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
)

// ServerConfig holds the limits and switches of a stage's gRPC server.
type ServerConfig struct {
	// Reflection registers the server reflection service, so grpcurl works
	// without proto files. Production may turn it off.
	Reflection bool
	// RequestTimeout caps every call, whatever deadline the caller sent.
	RequestTimeout time.Duration
	// MaxRecvMsgBytes bounds one request; a larger one is ResourceExhausted.
	MaxRecvMsgBytes int
	// MaxSendMsgBytes bounds one response.
	MaxSendMsgBytes int
	// MaxConcurrentStreams bounds the calls in flight on one connection.
	MaxConcurrentStreams uint32
	// MaxConnectionAge closes connections after this long so clients
	// re-resolve dns:/// names and new replicas receive work.
	MaxConnectionAge time.Duration
	// Credentials secure the server; nil means plaintext.
	Credentials credentials.TransportCredentials
	// Validated, if set, says which methods protovalidate checks the
	// requests of: the ones callers outside the mesh reach. The stages'
	// own batches are checked by their handlers, cheaply, instead of every
	// envelope field by field at every hop. Nil checks every request.
	Validated func(fullMethod string) bool
	// Authorize, if set, admits each call only from the callers it names
	// for the method, known by their verified client certificate; set it
	// with Credentials that require one. Nil admits every call.
	Authorize *Policy
	// TracerProvider, if set, traces every call (otelgrpc), continuing the
	// caller's trace from the call's metadata. Nil is tracing off.
	TracerProvider trace.TracerProvider
}

// DefaultServerConfig returns the limits used when a setting is not given.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Reflection:           true,
		RequestTimeout:       30 * time.Second,
		MaxRecvMsgBytes:      64 << 20,
		MaxSendMsgBytes:      64 << 20,
		MaxConcurrentStreams: 256,
		MaxConnectionAge:     5 * time.Minute,
	}
}

// Server is a gRPC server with the standard health service and, optionally,
// reflection.
type Server struct {
	*grpc.Server
	// Health is the grpc.health.v1 service; the overall status ("") and one
	// per registered service are kept in step by [Server.SetServing].
	Health *health.Server
	// Metrics are the server's Prometheus metrics, registered on the
	// registry passed to [NewServer].
	Metrics *grpcprom.ServerMetrics
	reflect bool
}

// NewServer builds a server with the telemesh interceptor chain. Services are
// registered on the returned server before it is started with Serve; call
// [Server.Ready] after registering them.
func NewServer(cfg ServerConfig, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}),
	))
	if err := reg.Register(metrics); err != nil {
		return nil, fmt.Errorf("register grpc metrics: %w", err)
	}
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("request validator: %w", err)
	}
	logOptions := []logging.Option{logging.WithLogOnEvents(logging.FinishCall), logging.WithLevels(codeToLevel), logging.WithErrorFields(errorFields)}
	opts := []grpc.ServerOption{
		// The chain runs outermost first. Metrics and logging see every call,
		// including ones that later interceptors reject, with the final code.
		// Authorization comes right after them, so a refused call is counted
		// and logged (PermissionDenied, naming the caller) but costs no
		// validation and never reaches a handler, and a caller that may not
		// call a method learns nothing from its validation errors.
		// The timeout is applied before validation and the handler so both
		// run under it. Errors are mapped to codes after the handler returns
		// and before logging and metrics see them; an internal error keeps
		// its cause for the log line, under the error id that is all the
		// caller receives. Recovery is innermost so a panic becomes an
		// Internal error that everything above records.
		grpc.ChainUnaryInterceptor(
			metrics.UnaryServerInterceptor(grpcprom.WithExemplarFromContext(tracing.Exemplar)),
			logging.UnaryServerInterceptor(slogAdapter(logger), logOptions...),
			authorizeUnary(cfg.Authorize),
			timeoutInterceptor(cfg.RequestTimeout),
			validateUnary(protovalidatemw.UnaryServerInterceptor(validator), cfg.Validated),
			errorMappingInterceptor(),
			recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(recoverHandler(logger))),
		),
		grpc.ChainStreamInterceptor(
			metrics.StreamServerInterceptor(grpcprom.WithExemplarFromContext(tracing.Exemplar)),
			logging.StreamServerInterceptor(slogAdapter(logger), logOptions...),
			authorizeStream(cfg.Authorize),
			validateStream(protovalidatemw.StreamServerInterceptor(validator), cfg.Validated),
			recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(recoverHandler(logger))),
		),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(cfg.MaxSendMsgBytes),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			// Clients ping at most every 10s (see Dial); anything faster is abuse.
			MinTime:             5 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.RequestTimeout + 5*time.Second,
			Time:                  30 * time.Second,
			Timeout:               10 * time.Second,
		}),
	}
	if cfg.Credentials != nil {
		opts = append(opts, grpc.Creds(cfg.Credentials))
	}
	if h := serverStatsHandler(cfg.TracerProvider); h != nil {
		// A stats handler sees the call before any interceptor, so the
		// span covers the whole chain and the context every interceptor
		// and the handler get holds it (log lines name its trace).
		opts = append(opts, grpc.StatsHandler(h))
	}
	s := &Server{
		Server:  grpc.NewServer(opts...),
		Health:  health.NewServer(),
		Metrics: metrics,
		reflect: cfg.Reflection,
	}
	healthpb.RegisterHealthServer(s.Server, s.Health)
	if cfg.Reflection {
		reflection.Register(s.Server)
	}
	s.SetServing(false)
	return s, nil
}

// validateUnary applies the validation interceptor to the methods only
// selects; all of them when only is nil.
func validateUnary(validate grpc.UnaryServerInterceptor, only func(string) bool) grpc.UnaryServerInterceptor {
	if only == nil {
		return validate
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !only(info.FullMethod) {
			return handler(ctx, req)
		}
		return validate(ctx, req, info, handler)
	}
}

// validateStream is [validateUnary] for streams.
func validateStream(validate grpc.StreamServerInterceptor, only func(string) bool) grpc.StreamServerInterceptor {
	if only == nil {
		return validate
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !only(info.FullMethod) {
			return handler(srv, ss)
		}
		return validate(srv, ss, info, handler)
	}
}

// NewHealthServer returns a plaintext gRPC server that serves only the
// health service of s, sharing its statuses, for probes that cannot present
// a client certificate (the kubelet) while s requires one. Serve it on its
// own listener and stop it with Stop once s has stopped.
func (s *Server) NewHealthServer() *grpc.Server {
	hs := grpc.NewServer(
		// Health requests are tiny; nothing else is served here.
		grpc.MaxRecvMsgSize(4<<10),
		grpc.MaxConcurrentStreams(16),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	healthpb.RegisterHealthServer(hs, s.Health)
	return hs
}

// Ready initialises per-method metrics once every service is registered.
func (s *Server) Ready() {
	s.Metrics.InitializeMetrics(s.Server)
}

// Serving reports whether the health service says SERVING for the whole
// server.
func (s *Server) Serving(ctx context.Context) bool {
	resp, err := s.Health.Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// SetServing marks the whole server and each registered service SERVING or
// NOT_SERVING in the health service.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.Health.SetServingStatus("", st)
	for name := range s.GetServiceInfo() {
		if name == healthpb.Health_ServiceDesc.ServiceName {
			continue
		}
		s.Health.SetServingStatus(name, st)
	}
}

// Stop stops the server gracefully: health turns NOT_SERVING, new calls are
// refused and calls in flight may finish within grace; after that they are
// cancelled.
func (s *Server) Stop(grace time.Duration) {
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.Server.Stop()
		<-done
	}
}

// timeoutInterceptor bounds every call by max, keeping a shorter deadline
// the caller set.
func timeoutInterceptor(max time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if max <= 0 {
			return handler(ctx, req)
		}
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > max {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, max)
			defer cancel()
		}
		return handler(ctx, req)
	}
}

// ErrPanic is the cause of a call whose handler panicked.
var ErrPanic = errors.New("panic in gRPC handler")

func recoverHandler(logger *slog.Logger) recovery.RecoveryHandlerFuncContext {
	return func(ctx context.Context, p any) error {
		err := NewInternalError(fmt.Errorf("%w: %v", ErrPanic, p))
		logger.ErrorContext(ctx, "panic in gRPC handler", "panic", fmt.Sprint(p), "error_id", err.ID, "stack", string(debug.Stack()))
		return err
	}
}

func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

// codeToLevel keeps successful calls at debug so a busy stage does not log a
// line per batch; failures are warnings or errors.
func codeToLevel(c codes.Code) logging.Level {
	switch c {
	case codes.OK:
		return logging.LevelDebug
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return logging.LevelError
	default:
		return logging.LevelWarn
	}
}
