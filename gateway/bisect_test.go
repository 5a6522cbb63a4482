package gateway

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testutil"
)

// endingChain stands in for the chain as far as the rows the messages carry
// go: it writes each message's carried rows where its way ends, answers a
// message whose dedupe key already ended a duplicate of the one that did
// (writing its carried rows too, as the validator and the persister do),
// and refuses with InvalidArgument every call that holds the poison
// message. With partial set it finishes the other messages of such a call
// before it refuses it, as the chain does when one of its branches has
// committed by the time another fails; without, it writes nothing of it.
type endingChain struct {
	validatorv1.UnimplementedValidatorServiceServer
	db      *testdb.DB
	logs    *stagelog.Writer
	poison  string
	partial bool

	mu sync.Mutex
	// ended maps a dedupe key to the message id whose way ended.
	ended map[string]string
	// ids maps each source message id to the message id it was sent with.
	ids map[string]string
}

func (c *endingChain) Validate(ctx context.Context, req *validatorv1.ValidateRequest) (*validatorv1.ValidateResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rows := c.logs.Batch()
	carried := func(e *telemetryv1.Envelope) {
		rows.AddCarried(envelope.ParseUUID(e.GetMessageId()), e.GetDedupeKey(), e.GetStageLog()...)
	}
	out := make([]*telemetryv1.Outcome, len(req.GetEnvelopes()))
	finished := map[string]string{}
	poisoned := false
	for i, e := range req.GetEnvelopes() {
		c.ids[e.GetSourceMessageId()] = e.GetMessageId()
		if id, ok := c.ended[e.GetDedupeKey()]; ok {
			carried(e)
			out[i] = &telemetryv1.Outcome{MessageId: id, DedupeKey: e.GetDedupeKey(), Status: telemetryv1.MessageStatus_MESSAGE_STATUS_DUPLICATE}
			continue
		}
		if e.GetSourceMessageId() == c.poison {
			poisoned = true
			continue
		}
		carried(e)
		finished[e.GetDedupeKey()] = e.GetMessageId()
		out[i] = &telemetryv1.Outcome{MessageId: e.GetMessageId(), DedupeKey: e.GetDedupeKey(), Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED}
	}
	if poisoned && !c.partial {
		return nil, status.Error(codes.InvalidArgument, "the poison message")
	}
	if err := rows.Write(ctx, c.db.Pool); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	maps.Copy(c.ended, finished)
	if poisoned {
		return nil, status.Error(codes.InvalidArgument, "the poison message")
	}
	return &validatorv1.ValidateResponse{Outcomes: out}, nil
}

// TestSplitBatchWritesIngressRowsOnce sends a batch that holds one message
// the chain refuses, so the gateway splits it until that message is alone
// and dead-letters it. Each of its healthy neighbours has exactly one
// ingress row, whether the chain finished them in a call that failed or
// not.
func TestSplitBatchWritesIngressRowsOnce(t *testing.T) {
	for _, partial := range []bool{true, false} {
		name := "the chain wrote nothing of a failed call"
		if partial {
			name = "the chain finished the others of a failed call"
		}
		t.Run(name, func(t *testing.T) {
			c := &endingChain{poison: "split-5", partial: partial, ended: map[string]string{}, ids: map[string]string{}}
			f := newFixtureWith(t, func(db *testdb.DB) validatorv1.ValidatorServiceServer {
				logs, err := stagelog.New(stagelog.ModeAll, 1, "test-chain")
				if err != nil {
					t.Fatal(err)
				}
				c.db, c.logs = db, logs
				return c
			})
			cfg := f.config()
			cfg.BatchSize, cfg.BatchAge = 8, 2*time.Second
			f.start(cfg)
			sent := f.publish("split", cfg.BatchSize)
			testutil.Eventually(t, time.Minute, "every message acknowledged", func() error {
				if info := f.consumer(cfg); info.NumAckPending != 0 || info.NumPending != 0 {
					return fmt.Errorf("%d awaiting an ack, %d not delivered", info.NumAckPending, info.NumPending)
				}
				return nil
			})
			var dead int
			if err := f.db.Pool.QueryRow(t.Context(), `select count(*) from ingestion_messages
				where source_message_id = $1 and status = 'failed_terminal' and error_summary like 'rejected by the chain%'`, c.poison).Scan(&dead); err != nil {
				t.Fatal(err)
			}
			if dead != 1 {
				t.Errorf("%d dead letters of the poison message, want 1", dead)
			}

			rows, err := f.db.Pool.Query(t.Context(), `select message_id::text, count(*) from ingestion_stage_logs
				where stage = 'ingress' and status = 'completed' group by 1`)
			if err != nil {
				t.Fatal(err)
			}
			perID := map[string]int{}
			for rows.Next() {
				var (
					id string
					n  int
				)
				if err := rows.Scan(&id, &n); err != nil {
					t.Fatal(err)
				}
				perID[id] = n
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			var got []string
			for _, src := range sent {
				if src != c.poison {
					got = append(got, fmt.Sprintf("%s: %d", src, perID[c.ids[src]]))
				}
			}
			want := slices.Clone(got)
			for i, g := range want {
				want[i] = g[:strings.Index(g, ":")] + ": 1"
			}
			if !slices.Equal(got, want) {
				t.Errorf("completed ingress rows per healthy message:\n got %s\nwant %s", strings.Join(got, ", "), strings.Join(want, ", "))
			}
		})
	}
}
