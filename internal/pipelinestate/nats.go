package pipelinestate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// errNoNATS is returned by a NATS read of a reader that has no JetStream.
var errNoNATS = errors.New("no NATS connection")

// StreamInfo is what the state shows of a JetStream stream.
type StreamInfo struct {
	Name     string    `json:"name"`
	Subjects []string  `json:"subjects"`
	Messages uint64    `json:"messages"`
	LastSeq  uint64    `json:"last_seq"`
	LastTime time.Time `json:"last_time"`
}

// ConsumerInfo is what the state shows of the gateway's durable consumer:
// its backlog.
type ConsumerInfo struct {
	Name           string   `json:"name"`
	Stream         string   `json:"stream"`
	FilterSubjects []string `json:"filter_subjects,omitempty"`
	// Pending are the messages of the stream not delivered yet;
	// AckPending those delivered and not finished.
	Pending      uint64 `json:"pending"`
	AckPending   int    `json:"ack_pending"`
	Redelivered  int    `json:"redelivered"`
	WaitingPulls int    `json:"waiting_pulls"`
	DeliveredSeq uint64 `json:"delivered_stream_seq"`
}

// connectNATS opens a NATS connection and its JetStream context.
func connectNATS(cfg Config) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := cfg.NATSAuth.Options()
	if err != nil {
		return nil, nil, fmt.Errorf("connect nats: %w", err)
	}
	opts = append(opts, nats.Name("telemesh-status"), nats.Timeout(cfg.Timeout), nats.MaxReconnects(0))
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// Stream reads the gateway's stream.
func (r *Reader) Stream(ctx context.Context) (*StreamInfo, error) {
	if r.js == nil {
		return nil, errNoNATS
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", r.cfg.Stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", r.cfg.Stream, err)
	}
	return &StreamInfo{
		Name: info.Config.Name, Subjects: info.Config.Subjects, Messages: info.State.Msgs,
		LastSeq: info.State.LastSeq, LastTime: info.State.LastTime,
	}, nil
}

// Consumer reads the gateway's durable consumer.
func (r *Reader) Consumer(ctx context.Context) (*ConsumerInfo, error) {
	if r.js == nil {
		return nil, errNoNATS
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	c, err := r.js.Consumer(ctx, r.cfg.Stream, r.cfg.Consumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", r.cfg.Consumer, r.cfg.Stream, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("consumer %s info: %w", r.cfg.Consumer, err)
	}
	filters := info.Config.FilterSubjects
	if info.Config.FilterSubject != "" {
		filters = append([]string{info.Config.FilterSubject}, filters...)
	}
	return &ConsumerInfo{
		Name: info.Name, Stream: info.Stream, FilterSubjects: filters,
		Pending: info.NumPending, AckPending: info.NumAckPending, Redelivered: info.NumRedelivered,
		WaitingPulls: info.NumWaiting, DeliveredSeq: info.Delivered.Stream,
	}, nil
}

// subjectMessages counts the stream's messages on subjects matching filter.
func (r *Reader) subjectMessages(ctx context.Context, filter string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", r.cfg.Stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, fmt.Errorf("stream %s info for %s: %w", r.cfg.Stream, filter, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// bucket reads whether the publisher's KV bucket exists.
func (r *Reader) bucket(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if _, err := r.js.KeyValue(ctx, r.cfg.Bucket); err != nil {
		return fmt.Errorf("kv bucket %s: %w", r.cfg.Bucket, err)
	}
	return nil
}

// analyticsStream reads whether the publisher's analytics stream exists.
func (r *Reader) analyticsStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if _, err := r.js.Stream(ctx, r.cfg.AnalyticsStream); err != nil {
		return fmt.Errorf("stream %s: %w", r.cfg.AnalyticsStream, err)
	}
	return nil
}
