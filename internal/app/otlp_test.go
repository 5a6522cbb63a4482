package app

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"

	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// receivedSpan is one span as an OTLP receiver got it, with the service
// that sent it.
type receivedSpan struct {
	Service      string
	Name         string
	Kind         tracev1.Span_SpanKind
	TraceID      string
	SpanID       string
	ParentSpanID string
	Attributes   map[string]string
	Links        []string // span ids
	Error        bool
	Status       string
}

// otlpReceiver is an OTLP/gRPC trace receiver that keeps every span it is
// sent, as a collector would.
type otlpReceiver struct {
	collectortracev1.UnimplementedTraceServiceServer
	addr string

	mu    sync.Mutex
	spans []receivedSpan
}

// newOTLPReceiver serves a receiver on loopback until the test ends.
func newOTLPReceiver(t testing.TB) *otlpReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: ln.Addr().String()}
	srv := grpc.NewServer()
	collectortracev1.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return r
}

// Endpoint is the receiver's URL, as OTEL_EXPORTER_OTLP_ENDPOINT gives it.
func (r *otlpReceiver) Endpoint() string { return "http://" + r.addr }

// Export keeps the spans of one export.
func (r *otlpReceiver) Export(_ context.Context, req *collectortracev1.ExportTraceServiceRequest) (*collectortracev1.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				rec := receivedSpan{
					Service: service, Name: s.GetName(), Kind: s.GetKind(),
					TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					ParentSpanID: hex.EncodeToString(s.GetParentSpanId()), Attributes: map[string]string{},
					Error: s.GetStatus().GetCode() == tracev1.Status_STATUS_CODE_ERROR, Status: s.GetStatus().GetMessage(),
				}
				for _, kv := range s.GetAttributes() {
					v := kv.GetValue()
					switch {
					case v.GetStringValue() != "":
						rec.Attributes[kv.GetKey()] = v.GetStringValue()
					default:
						rec.Attributes[kv.GetKey()] = fmt.Sprint(v.GetIntValue())
					}
				}
				for _, l := range s.GetLinks() {
					rec.Links = append(rec.Links, hex.EncodeToString(l.GetSpanId()))
				}
				r.spans = append(r.spans, rec)
			}
		}
	}
	return &collectortracev1.ExportTraceServiceResponse{}, nil
}

// Trace returns the spans received of one trace.
func (r *otlpReceiver) Trace(traceID string) []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []receivedSpan
	for _, s := range r.spans {
		if s.TraceID == traceID {
			out = append(out, s)
		}
	}
	return out
}

// Span returns the span with id, if received.
func (r *otlpReceiver) Span(id string) (receivedSpan, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if s.SpanID == id {
			return s, true
		}
	}
	return receivedSpan{}, false
}

// describe renders a trace for a test log: one span a line, children
// indented under their parents.
func describe(spans []receivedSpan) string {
	byParent := map[string][]receivedSpan{}
	ids := map[string]bool{}
	for _, s := range spans {
		ids[s.SpanID] = true
	}
	for _, s := range spans {
		p := s.ParentSpanID
		if !ids[p] {
			p = "" // a remote parent: the device's, or another trace's
		}
		byParent[p] = append(byParent[p], s)
	}
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		kids := byParent[parent]
		sort.Slice(kids, func(i, j int) bool { return kids[i].Name < kids[j].Name })
		for _, s := range kids {
			keys := make([]string, 0, len(s.Attributes))
			for k := range s.Attributes {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			attrs := make([]string, len(keys))
			for i, k := range keys {
				attrs[i] = k + "=" + s.Attributes[k]
			}
			status := ""
			if s.Error {
				status = " ERROR(" + s.Status + ")"
			}
			fmt.Fprintf(&b, "%s%s [%s] span=%s parent=%s links=%v%s {%s}\n", strings.Repeat("  ", depth), s.Name, s.Service,
				s.SpanID, s.ParentSpanID, s.Links, status, strings.Join(attrs, " "))
			walk(s.SpanID, depth+1)
		}
	}
	walk("", 0)
	return b.String()
}
