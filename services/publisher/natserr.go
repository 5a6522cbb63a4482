package publisher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The causes of a failed write to the KV bucket or the analytics stream.
// Each completes a sentence that begins with the resource's name, as
// [ResourceError] prints it.
var (
	// ErrMissing is a bucket or stream that does not exist: deleted, or
	// never created.
	ErrMissing = errors.New("does not exist")
	// ErrNotCaptured is an event subject that the analytics stream exists
	// but does not capture, so no stream takes the event.
	ErrNotCaptured = errors.New("does not capture the event's subject")
	// ErrUnavailable is a bucket or stream that exists but that no server
	// answered for: the servers holding its replicas are down or without
	// quorum.
	ErrUnavailable = errors.New("exists but no server answered for it (its replicas may be down or without quorum)")
	// ErrTimeout is a write that got no answer in the time allowed.
	ErrTimeout = errors.New("did not answer in time")
	// ErrDisconnected is a write attempted while the connection to NATS is
	// down; it reconnects by itself.
	ErrDisconnected = errors.New("cannot be reached: the connection to NATS is down")
)

// Kinds of the NATS resources the publisher writes to, as [ResourceError]
// names them.
const (
	KindBucket    = "KV bucket"
	KindAnalytics = "analytics stream"
)

// ResourceError is a failed write to the KV bucket or the analytics stream,
// told in one line that names the resource, such as
// `KV bucket "device-states" does not exist`. It is the reason recorded on
// publish_failed rows and in the publish stage log.
type ResourceError struct {
	// Kind is [KindBucket] or [KindAnalytics].
	Kind string
	// Name is the bucket's or the stream's name.
	Name string
	// Err is the cause: one of the sentinel errors of this package, or
	// what NATS said when it is none of them.
	Err error
	// Within is the time the write was allowed, told with [ErrTimeout].
	Within time.Duration
}

// Error returns the one-line reason.
func (e *ResourceError) Error() string {
	what := fmt.Sprintf("%s %q", e.Kind, e.Name)
	switch {
	case errors.Is(e.Err, ErrTimeout) && e.Within > 0:
		return fmt.Sprintf("%s did not answer within %s", what, e.Within)
	case errors.Is(e.Err, ErrMissing), errors.Is(e.Err, ErrNotCaptured), errors.Is(e.Err, ErrUnavailable),
		errors.Is(e.Err, ErrTimeout), errors.Is(e.Err, ErrDisconnected):
		return what + " " + e.Err.Error()
	}
	return what + ": " + natsMessage(e.Err)
}

// Unwrap returns the cause.
func (e *ResourceError) Unwrap() error { return e.Err }

// Down reports whether the resource is gone or unusable, as opposed to one
// write failing: it does not exist, does not capture the subjects, or no
// server answers for it. Timeouts and a dropped connection are not: they
// pass by themselves.
func (e *ResourceError) Down() bool {
	return errors.Is(e.Err, ErrMissing) || errors.Is(e.Err, ErrNotCaptured) || errors.Is(e.Err, ErrUnavailable)
}

// natsMessage is what NATS said, without the "nats: " prefix and, for an
// API error, only its description.
func natsMessage(err error) string {
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Description != "" {
		return api.Description
	}
	return strings.TrimPrefix(err.Error(), "nats: ")
}

// ambiguous reports whether err can mean that the resource is missing as
// well as that it did not answer: a direct get of a deleted bucket meets no
// responders, a publish to a subject no stream captures gets no stream
// response. Only JetStream's own view of the resource tells them apart.
func ambiguous(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
}

// plainCause maps the errors whose meaning does not depend on the resource
// to a cause, or returns nil.
func plainCause(err error) error {
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return ErrMissing
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return ErrTimeout
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionDraining):
		return ErrDisconnected
	}
	return nil
}

// lookupTimeout bounds the JetStream request that tells a missing resource
// from one that did not answer; the write it explains may have used up its
// own context.
const lookupTimeout = 2 * time.Second

// diagnosis turns the errors of one batch into [ResourceError]s. It asks
// JetStream about the bucket and the stream at most once each, so a batch
// of a thousand failed writes costs one lookup, not a thousand.
type diagnosis struct {
	js      jetstream.JetStream
	bucket  string
	stream  string
	timeout time.Duration

	bucketCause error
	streamInfo  *jetstream.StreamInfo
	streamErr   error
	streamDone  bool
}

// bucketError describes err, from a read or write of the bucket.
func (d *diagnosis) bucketError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var re *ResourceError
	if errors.As(err, &re) {
		return err
	}
	e := &ResourceError{Kind: KindBucket, Name: d.bucket, Err: err, Within: d.timeout}
	if c := plainCause(err); c != nil {
		e.Err = c
		return e
	}
	if !ambiguous(err) {
		return e
	}
	if d.bucketCause == nil {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		_, lerr := d.js.KeyValue(lctx, d.bucket)
		switch {
		case errors.Is(lerr, jetstream.ErrBucketNotFound):
			d.bucketCause = ErrMissing
		case lerr == nil:
			d.bucketCause = ErrUnavailable
		default:
			// The lookup failed too: say what the write met.
			d.bucketCause = ErrUnavailable
			if c := plainCause(lerr); c != nil {
				d.bucketCause = c
			}
		}
	}
	e.Err = d.bucketCause
	return e
}

// streamError describes err, from publishing an event on subject.
func (d *diagnosis) streamError(ctx context.Context, subject string, err error) error {
	if err == nil {
		return nil
	}
	e := &ResourceError{Kind: KindAnalytics, Name: d.stream, Err: err, Within: d.timeout}
	if c := plainCause(err); c != nil {
		e.Err = c
		return e
	}
	if !ambiguous(err) {
		return e
	}
	if !d.streamDone {
		d.streamDone = true
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		var s jetstream.Stream
		if s, d.streamErr = d.js.Stream(lctx, d.stream); d.streamErr == nil {
			d.streamInfo = s.CachedInfo()
		}
	}
	switch {
	case errors.Is(d.streamErr, jetstream.ErrStreamNotFound):
		e.Err = ErrMissing
	case d.streamInfo != nil && !captures(d.streamInfo.Config.Subjects, subject):
		e.Err = ErrNotCaptured
	default:
		e.Err = ErrUnavailable
	}
	return e
}

// captures reports whether any of the stream's subject patterns matches
// subject.
func captures(patterns []string, subject string) bool {
	for _, p := range patterns {
		if subjectMatches(p, subject) {
			return true
		}
	}
	return false
}

// subjectMatches reports whether the NATS subject pattern p matches the
// literal subject s.
func subjectMatches(p, s string) bool {
	pt, st := strings.Split(p, "."), strings.Split(s, ".")
	for i, tok := range pt {
		if tok == ">" {
			return i < len(st)
		}
		if i >= len(st) || (tok != "*" && tok != st[i]) {
			return false
		}
	}
	return len(pt) == len(st)
}
