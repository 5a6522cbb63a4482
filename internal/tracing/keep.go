package tracing

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// maxHeldTraces bounds the traces [keepFailed] holds spans of at once. A
// stage holds a trace only while it works on the message (its spans end
// together when the outcome comes back), so this is far above what a
// stage has in flight; past it a failure's spans may be missing, never the
// stage's memory.
const maxHeldTraces = 50_000

// keepFailed exports the spans the head sampler left out when their
// message failed. Every stage decides on its own spans: it holds the
// unsampled spans of a trace until the trace's first span in this process
// (its local root, whose parent came from another process or the device)
// ends; if any of them is marked an error, it exports them all, else it
// lets them go. A stage's message span ends when the outcome comes back up
// the chain, so every stage knows whether the message failed further down.
type keepFailed struct {
	exp    sdktrace.SpanExporter
	logger *slog.Logger

	mu      sync.Mutex
	held    map[trace.TraceID]*heldTrace
	out     chan []sdktrace.ReadOnlySpan
	done    chan struct{}
	stopped bool
}

type heldTrace struct {
	spans  []sdktrace.ReadOnlySpan
	failed bool
}

func newKeepFailed(ctx context.Context, exp sdktrace.SpanExporter, logger *slog.Logger) *keepFailed {
	k := &keepFailed{
		exp: exp, logger: logger,
		held: map[trace.TraceID]*heldTrace{},
		out:  make(chan []sdktrace.ReadOnlySpan, 256),
		done: make(chan struct{}),
	}
	// Exports outlive the context the provider was built under: the last
	// ones go out while the stage shuts down.
	go k.export(context.WithoutCancel(ctx))
	return k
}

// OnStart does nothing: a span is judged when it ends.
func (k *keepFailed) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd holds an unsampled span until its local root ends, then exports the
// trace's held spans if one of them failed.
func (k *keepFailed) OnEnd(s sdktrace.ReadOnlySpan) {
	sc := s.SpanContext()
	if sc.IsSampled() {
		return // the batcher exports it
	}
	failed := s.Status().Code == codes.Error
	localRoot := !s.Parent().IsValid() || s.Parent().IsRemote()
	id := sc.TraceID()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	h := k.held[id]
	if h == nil {
		if localRoot && !failed {
			return // a lone span that did not fail: nothing to keep
		}
		if len(k.held) >= maxHeldTraces {
			return
		}
		h = &heldTrace{}
		k.held[id] = h
	}
	h.spans = append(h.spans, s)
	h.failed = h.failed || failed
	if !localRoot {
		return
	}
	delete(k.held, id)
	if !h.failed {
		return
	}
	select {
	case k.out <- h.spans:
	default:
		k.logger.Warn("spans of a failed message dropped: the exporter is behind", "trace_id", id.String(), "spans", len(h.spans))
	}
}

func (k *keepFailed) export(ctx context.Context) {
	defer close(k.done)
	for spans := range k.out {
		if err := k.exportOnce(ctx, spans); err != nil {
			k.logger.Warn("could not export the spans of a failed message", "spans", len(spans), "err", err)
		}
	}
}

// exportTimeout bounds one export, so an exporter that hangs cannot hold
// the failed messages' spans behind it for ever.
const exportTimeout = 10 * time.Second

func (k *keepFailed) exportOnce(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	ctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()
	return k.exp.ExportSpans(ctx, spans)
}

// ForceFlush waits for nothing: spans are handed to the exporter as soon as
// their trace is decided.
func (k *keepFailed) ForceFlush(context.Context) error { return nil }

// Shutdown exports what was decided and drops what was not; the exporter
// itself is shut down by the batcher, after this.
func (k *keepFailed) Shutdown(ctx context.Context) error {
	k.mu.Lock()
	if !k.stopped {
		k.stopped = true
		k.held = nil
		close(k.out)
	}
	k.mu.Unlock()
	select {
	case <-k.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
