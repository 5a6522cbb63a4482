package app

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/telemesh/telemesh/gateway"
	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/envelope"
)

// limitBytes is every stage's request limit in TestStageRequestLimits.
const limitBytes = 64 << 10

// TestStageRequestLimits sends requests straight to each stage: one over
// the size limit is ResourceExhausted, a malformed one InvalidArgument, and
// the stage then serves a good request.
func TestStageRequestLimits(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Process.MaxRecvMsgBytes = limitBytes })
	topic := f.topicID()
	// good is a valid envelope of meter-01, as the gateway would send it.
	good := func(status telemetryv1.MessageStatus) *telemetryv1.Envelope {
		id := uuid.Must(uuid.NewV7())
		return &telemetryv1.Envelope{
			MessageId: id.String(), DedupeKey: "limits:" + id.String(), SourceSubject: "devices.meter-01.telemetry",
			OrganizationId: f.acme.String(), OrganizationSlug: "acme", DeviceUuid: f.meter01.String(), DeviceExternalId: "meter-01",
			DeviceActive: true, Topic: "telemetry", TopicId: topic, DeliveryAttempt: 1,
			ReceivedAt: timestamppb.Now(), Payload: []byte(`{"temp_c": 1}`), ContentType: "application/json",
			Status: status, Values: `{"temp_c":1}`,
		}
	}
	big := func(status telemetryv1.MessageStatus) *telemetryv1.Envelope {
		e := good(status)
		e.Payload = []byte(`{"temp_c": 1, "pad": "` + strings.Repeat("x", limitBytes) + `"}`)
		return e
	}
	many := func() []*telemetryv1.Envelope {
		// Empty envelopes are 2 bytes each: 10,001 fit the size limit.
		envs := make([]*telemetryv1.Envelope, 10001)
		for i := range envs {
			envs[i] = &telemetryv1.Envelope{}
		}
		return envs
	}
	processing := telemetryv1.MessageStatus_MESSAGE_STATUS_PROCESSING
	completed := telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED

	dial := func(t *testing.T, stage string) *grpc.ClientConn {
		conn, err := grpc.NewClient(f.mesh.GRPC[stage], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	// call is one request to a stage; it returns the outcome status of the
	// first message, if any.
	type call func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error)
	validate := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := validatorv1.NewValidatorServiceClient(conn).Validate(ctx, &validatorv1.ValidateRequest{WireVersion: envelope.WireVersion, Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	derive := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := deriverv1.NewDeriverServiceClient(conn).Derive(ctx, &deriverv1.DeriveRequest{WireVersion: envelope.WireVersion, Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	persist := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := persisterv1.NewPersisterServiceClient(conn).Persist(ctx, &persisterv1.PersistRequest{WireVersion: envelope.WireVersion, Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	publish := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := publisherv1.NewPublisherServiceClient(conn).Publish(ctx, &publisherv1.PublishRequest{WireVersion: envelope.WireVersion, Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	ingest := func(req *gatewayv1.IngestRequest) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := gatewayv1.NewGatewayServiceClient(conn).Ingest(ctx, req)
			return r.GetOutcome().GetStatus(), err
		}
	}

	tests := []struct {
		stage string
		bad   map[string]struct {
			call call
			want codes.Code
		}
		// good makes a good request, new each time.
		good func() call
	}{
		{stage: Validator, good: func() call { return validate(good(processing)) }},
		{stage: Deriver, good: func() call { return derive(good(processing)) }},
		{stage: Persister, good: func() call { return persist(good(processing)) }},
		{stage: Publisher, good: func() call { return publish(good(completed)) }},
		{stage: Gateway, good: func() call {
			return ingest(&gatewayv1.IngestRequest{Subject: "devices.meter-01.telemetry", Payload: []byte(`{"temp_c": 1}`)})
		}},
	}
	type badCall = struct {
		call call
		want codes.Code
	}
	tests[0].bad = map[string]badCall{
		"over the size limit": {validate(big(processing)), codes.ResourceExhausted},
		"no envelopes":        {validate(), codes.InvalidArgument},
		"no message id":       {validate(without(good(processing), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {validate(without(good(processing), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {validate(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {validate(many()...), codes.InvalidArgument},
	}
	tests[1].bad = map[string]badCall{
		"over the size limit": {derive(big(processing)), codes.ResourceExhausted},
		"no envelopes":        {derive(), codes.InvalidArgument},
		"no message id":       {derive(without(good(processing), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {derive(without(good(processing), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {derive(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {derive(many()...), codes.InvalidArgument},
	}
	tests[2].bad = map[string]badCall{
		"over the size limit": {persist(big(processing)), codes.ResourceExhausted},
		"no envelopes":        {persist(), codes.InvalidArgument},
		"no message id":       {persist(without(good(processing), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {persist(without(good(processing), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {persist(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {persist(many()...), codes.InvalidArgument},
	}
	tests[3].bad = map[string]badCall{
		"over the size limit": {publish(big(completed)), codes.ResourceExhausted},
		"no envelopes":        {publish(), codes.InvalidArgument},
		"no message id":       {publish(without(good(completed), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {publish(without(good(completed), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {publish(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {publish(many()...), codes.InvalidArgument},
	}
	tests[4].bad = map[string]badCall{
		"over the size limit": {ingest(&gatewayv1.IngestRequest{Subject: "devices.meter-01.telemetry", Payload: big(processing).Payload}), codes.ResourceExhausted},
		"no subject":          {ingest(&gatewayv1.IngestRequest{Payload: []byte(`{"temp_c": 1}`)}), codes.InvalidArgument},
		"subject too long":    {ingest(&gatewayv1.IngestRequest{Subject: "devices." + strings.Repeat("x", 600) + ".telemetry"}), codes.InvalidArgument},
		"message id too long": {ingest(&gatewayv1.IngestRequest{Subject: "devices.meter-01.telemetry", MessageId: strings.Repeat("x", 300)}), codes.InvalidArgument},
		"a $SYS subject":      {ingest(&gatewayv1.IngestRequest{Subject: "$SYS.ACCOUNT.x.CONNECT"}), codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.stage, func(t *testing.T) {
			conn := dial(t, tt.stage)
			for name, bad := range tt.bad {
				t.Run(name, func(t *testing.T) {
					if _, err := bad.call(t.Context(), conn); status.Code(err) != bad.want {
						t.Errorf("got %v, want %s", err, bad.want)
					}
					// The same connection, and the stage, serve on.
					got, err := tt.good()(t.Context(), conn)
					if err != nil || got != completed {
						t.Errorf("good request after it: %v, %v; want completed", got, err)
					}
				})
			}
		})
	}
}

func noMessageID(e *telemetryv1.Envelope) { e.MessageId = "" }
func noDedupeKey(e *telemetryv1.Envelope) { e.DedupeKey = "" }

// without returns e changed by drop.
func without(e *telemetryv1.Envelope, drop func(*telemetryv1.Envelope)) *telemetryv1.Envelope {
	drop(e)
	return e
}

func firstStatus(outcomes []*telemetryv1.Outcome) telemetryv1.MessageStatus {
	if len(outcomes) == 0 {
		return telemetryv1.MessageStatus_MESSAGE_STATUS_UNSPECIFIED
	}
	return outcomes[0].GetStatus()
}

// randomText returns n random letters and digits: unlike a repeated byte,
// Postgres cannot compress it under its index-entry limit.
func randomText(rng *rand.Rand, n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}

// sent is one message published to the stream, by its stream sequence.
type sent struct {
	name string
	seq  uint64
	// id is the message id the gateway sees: the first Nats-Msg-Id value,
	// else the payload's.
	id string
	// valid says the message goes to a known device with an id within the
	// limit and a payload the pipeline completes.
	valid bool
}

// publishMsg publishes m and returns its stream sequence; ok is false when
// NATS refused it or took it for a duplicate within its window.
func (f *fixture) publishMsg(m *nats.Msg) (seq uint64, ok bool, err error) {
	ack, err := f.js.PublishMsg(f.t.Context(), m)
	if err != nil {
		return 0, false, err
	}
	return ack.Sequence, !ack.Duplicate, nil
}

// messageRow is what ingestion_messages holds for one stream sequence.
type messageRow struct {
	status, stage, summary, sourceID, key, subject string
}

// rowsOf returns the ingestion_messages rows of each stream sequence.
func (f *fixture) rowsOf(seqs []uint64) map[uint64][]messageRow {
	f.t.Helper()
	ints := make([]int64, len(seqs))
	for i, s := range seqs {
		ints[i] = int64(s)
	}
	rows, err := f.db.Pool.Query(f.t.Context(), `select stream_sequence, status, coalesce(halted_stage, ''), coalesce(error_summary, ''),
			coalesce(source_message_id, ''), dedupe_key, source_subject
		from ingestion_messages where stream_sequence = any($1)`, ints)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[uint64][]messageRow{}
	for rows.Next() {
		var (
			seq int64
			r   messageRow
		)
		if err := rows.Scan(&seq, &r.status, &r.stage, &r.summary, &r.sourceID, &r.key, &r.subject); err != nil {
			f.t.Fatal(err)
		}
		out[uint64(seq)] = append(out[uint64(seq)], r)
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// waitOneRowEach waits until every sent message has its row and the
// consumer is drained, then returns the rows. On timeout it names each
// message that has no row, or more than one.
func (f *fixture) waitOneRowEach(msgs []sent, within time.Duration) map[uint64][]messageRow {
	f.t.Helper()
	seqs := make([]uint64, len(msgs))
	for i, m := range msgs {
		seqs[i] = m.seq
	}
	deadline := time.Now().Add(within)
	for {
		rows := f.rowsOf(seqs)
		done := len(rows) == len(msgs)
		for _, r := range rows {
			done = done && len(r) == 1
		}
		if done && f.consumerIdle() {
			return rows
		}
		if time.Now().After(deadline) {
			var problems []string
			for _, m := range msgs {
				if n := len(rows[m.seq]); n != 1 {
					problems = append(problems, fmt.Sprintf("%s (sequence %d): %d rows", m.name, m.seq, n))
				}
			}
			f.t.Fatalf("not every message has exactly one row within %s (consumer idle: %v):\n%s\ngateway log: dead letters %v, NAKs %v",
				within, f.consumerIdle(), strings.Join(problems, "\n"),
				f.gatewayMetric("telemesh_gateway_dead_lettered_total"), f.gatewayMetric("telemesh_gateway_naks_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// consumerIdle reports whether the gateway's consumer has nothing pending
// or unacknowledged.
func (f *fixture) consumerIdle() bool {
	c, err := f.js.Consumer(f.t.Context(), "TELEMETRY", "telemesh-gateway")
	if err != nil {
		return false
	}
	info, err := c.Info(f.t.Context())
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

func (f *fixture) gatewayMetric(name string) float64 {
	resp, err := http.Get("http://" + f.mesh.Admin[Gateway] + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return 0
}

// idKeyPart is how a message id longer than the limit appears in its
// stored dedupe key and source_message_id: cut, and ending with the
// SHA-256 of the whole id.
func idKeyPart(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestOversizedMessageIDsInOneBatch publishes, in one batch, a payload
// whose message_id is 10 KB of random text, a message whose Nats-Msg-Id is
// 4 KB of random text, and a valid message of another device. Each is
// recorded exactly once: the two oversized ones failed_terminal with the
// reason and their ids cut and hashed, the valid one completed; nothing is
// NAKed or dead-lettered.
func TestOversizedMessageIDsInOneBatch(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		// One batch of exactly these three, and a quick dead letter should
		// the batch fail.
		o.Gateway.BatchSize = 3
		o.Gateway.BatchAge = 5 * time.Second
		o.Gateway.MaxDeliver = 3
		o.Gateway.Backoff = []time.Duration{100 * time.Millisecond}
	})
	rng := rand.New(rand.NewPCG(1, 2))
	payloadID, headerID := randomText(rng, 10<<10), randomText(rng, 4<<10)

	var msgs []sent
	publish := func(name, subject, payload, header, id string, valid bool) {
		m := nats.NewMsg(subject)
		m.Data = []byte(payload)
		if header != "" {
			m.Header.Set("Nats-Msg-Id", header)
		}
		seq, ok, err := f.publishMsg(m)
		if err != nil || !ok {
			t.Fatalf("publish %s: %v (stored: %v)", name, err, ok)
		}
		msgs = append(msgs, sent{name: name, seq: seq, id: id, valid: valid})
	}
	publish("10 KB payload message_id", "devices.meter-01.telemetry", `{"message_id": "`+payloadID+`", "temp_c": 1}`, "", payloadID, false)
	publish("4 KB Nats-Msg-Id", "devices.meter-01.telemetry", `{"temp_c": 1}`, headerID, headerID, false)
	publish("valid message of globex-01", "devices.globex-01.telemetry", `{"temp_c": 10}`, "globex-valid-1", "globex-valid-1", true)

	rows := f.waitOneRowEach(msgs, 60*time.Second)
	for _, m := range msgs {
		r := rows[m.seq][0]
		if m.valid {
			if r.status != "completed" {
				t.Errorf("%s: %s (%s: %s), want completed", m.name, r.status, r.stage, r.summary)
			}
			continue
		}
		want := fmt.Sprintf("message id of %d bytes exceeds the limit of 256 bytes", len(m.id))
		if r.status != "failed_terminal" || r.stage != "ingress" || !strings.Contains(r.summary, want) {
			t.Errorf("%s: %s at %q (%s), want failed_terminal at ingress saying %q", m.name, r.status, r.stage, r.summary, want)
		}
		if len(r.sourceID) > 256 || !strings.HasPrefix(r.sourceID, m.id[:100]) || !strings.HasSuffix(r.sourceID, idKeyPart(m.id)) {
			t.Errorf("%s: source_message_id of %d bytes %.120q..., want the id cut to 256 bytes ending with its SHA-256", m.name, len(r.sourceID), r.sourceID)
		}
		if len(r.key) > 1024 || !strings.HasPrefix(r.key, "id:devices.meter-01.telemetry:"+m.id[:100]) || !strings.HasSuffix(r.key, idKeyPart(m.id)) {
			t.Errorf("%s: dedupe key of %d bytes %.120q..., want the subject and the cut, hashed id", m.name, len(r.key), r.key)
		}
	}
	if n := f.count(`select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
		where m.stream_sequence = $1 and t.processing_state = 'processed'`, int64(msgs[2].seq)); n != 1 {
		t.Errorf("valid message: %d processed telemetry rows, want 1", n)
	}
	for _, m := range msgs {
		if n := f.count(`select count(*) from ingestion_stage_logs s join ingestion_messages m on m.id = s.message_id
			where m.stream_sequence = $1 and s.stage = 'ingress'`, int64(m.seq)); n != 1 {
			t.Errorf("%s: %d ingress stage rows, want 1", m.name, n)
		}
	}
	for _, name := range []string{"telemesh_gateway_dead_lettered_total", "telemesh_gateway_naks_total"} {
		if n := f.gatewayMetric(name); n != 0 {
			t.Errorf("%s = %v, want 0: no message may fail its batch", name, n)
		}
	}

	t.Run("the same oversized payload id again is a duplicate", func(t *testing.T) {
		f := f.on(t)
		m := nats.NewMsg("devices.meter-01.telemetry")
		m.Data = []byte(`{"message_id": "` + payloadID + `", "temp_c": 2}`)
		if _, _, err := f.publishMsg(m); err != nil {
			t.Fatal(err)
		}
		f.waitIdle()
		if n := f.count(`select count(*) from ingestion_messages where dedupe_key like '%' || $1`, idKeyPart(payloadID)); n != 1 {
			t.Errorf("%d messages with the hashed key, want the original alone", n)
		}
	})
}

// jsonString writes s as a JSON string literal the way a careless device
// would: quotes, backslashes and control characters escaped, every other
// byte, invalid UTF-8 included, as it is.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// oddID returns a message id of one of the shapes a hostile or broken
// device sends: huge, exactly at or one byte over the limit, a multi-byte
// character across the limit, NUL, invalid UTF-8, whitespace, odd bytes.
// unique makes it unique, so no two messages of the test share a dedupe
// key.
func oddID(rng *rand.Rand, unique string) string {
	fill := func(n int) string {
		if n <= len(unique) {
			return unique
		}
		return unique + randomText(rng, n-len(unique))
	}
	switch rng.IntN(11) {
	case 0:
		return fill(257 + rng.IntN(20<<10))
	case 1:
		return fill(256)
	case 2:
		return fill(257)
	case 3:
		return fill(255) + "é"
	case 4:
		return fill(rng.IntN(300)) + "\x00" + randomText(rng, rng.IntN(8))
	case 5:
		return "\xff\xfe" + fill(rng.IntN(400))
	case 6:
		return unique + strings.Repeat("é", 100+rng.IntN(100))
	case 7:
		return " \t" + unique + " "
	case 8:
		return fill(1 + rng.IntN(64))
	case 9:
		return unique + strings.Repeat("\U0001F600", 60+rng.IntN(10))
	default:
		b := []byte(unique)
		for range rng.IntN(600) {
			c := byte(rng.IntN(256))
			if c == '\r' || c == '\n' {
				c = '?'
			}
			b = append(b, c)
		}
		return string(b)
	}
}

// TestHostileIDsAndHeadersOverNATS throws messages with random large and
// odd ids and headers at the gateway over NATS (huge ids, NUL, invalid
// UTF-8, many headers, the id header twice, long subjects) and checks that
// every message the stream took has exactly one ingestion_messages row,
// with every stored field within its bound, and that no message failed its
// batch. TELEMESH_FUZZ_SEED replays a run.
func TestHostileIDsAndHeadersOverNATS(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Gateway.MaxDeliver = 3
		o.Gateway.Backoff = []time.Duration{100 * time.Millisecond}
	})
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TELEMESH_FUZZ_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("TELEMESH_FUZZ_SEED: %v", err)
		}
	}
	t.Logf("seed %d (TELEMESH_FUZZ_SEED=%d replays this run)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	const n = 160
	var msgs []sent
	refused := 0
	for i := range n {
		unique := fmt.Sprintf("f%d-", i)
		subject := "devices.meter-01.telemetry"
		switch rng.IntN(8) {
		case 0:
			subject = "devices.globex-01.telemetry"
		case 1:
			subject = "devices." + randomText(rng, 1+rng.IntN(1500)) + ".telemetry"
		case 2:
			subject = "devices.meter-01.nosuchtopic"
		}
		payload := `{"temp_c": 1}`
		var payloadID string
		if rng.IntN(2) == 0 {
			payloadID = oddID(rng, unique)
			field := []string{"message_id", "msg_id", "id"}[rng.IntN(3)]
			payload = `{"` + field + `": ` + jsonString(payloadID) + `, "temp_c": 1}`
		}
		m := nats.NewMsg(subject)
		m.Data = []byte(payload)
		var headerID string
		switch rng.IntN(5) {
		case 0:
		case 1:
			headerID = oddID(rng, unique)
			m.Header.Set("Nats-Msg-Id", headerID)
		case 2:
			// The id header twice: the first value counts.
			headerID = oddID(rng, unique)
			m.Header.Add("Nats-Msg-Id", headerID)
			m.Header.Add("Nats-Msg-Id", oddID(rng, unique+"second-"))
		default:
			for j := range 1 + rng.IntN(200) {
				m.Header.Add(fmt.Sprintf("X-Fuzz-%d", j%50), randomText(rng, rng.IntN(200)))
			}
			if rng.IntN(2) == 0 {
				headerID = oddID(rng, unique)
				m.Header.Set("Nats-Msg-Id", headerID)
			}
		}
		// What the gateway will take as the id: NATS drops the blanks that
		// lead or end a header value.
		id := strings.Trim(headerID, " \t")
		if id == "" {
			id, _ = gateway.PayloadMessageID(m.Data)
		}
		seq, ok, err := f.publishMsg(m)
		if err != nil || !ok {
			refused++
			continue
		}
		msgs = append(msgs, sent{name: fmt.Sprintf("message %d on %.60q with id of %d bytes", i, subject, len(id)), seq: seq, id: id,
			valid: strings.HasPrefix(subject, "devices.meter-01.telemetry")})
	}
	t.Logf("%d messages published, %d refused by NATS", len(msgs), refused)
	if len(msgs) < n/2 {
		t.Fatalf("NATS took only %d of %d messages", len(msgs), n)
	}

	rows := f.waitOneRowEach(msgs, 2*time.Minute)
	for _, m := range msgs {
		r := rows[m.seq][0]
		switch {
		case len(r.sourceID) > 256 || len(r.key) > 1024 || len(r.subject) > 512:
			t.Errorf("%s: stored id %d, key %d, subject %d bytes; want at most 256, 1024 and 512", m.name, len(r.sourceID), len(r.key), len(r.subject))
		case r.status != "completed" && r.summary == "":
			t.Errorf("%s: %s without a reason", m.name, r.status)
		case strings.HasPrefix(r.summary, "dead-lettered") || strings.HasPrefix(r.summary, "rejected by the chain"):
			t.Errorf("%s: %s; it failed its batch", m.name, r.summary)
		case m.valid && len(m.id) > 256 && !strings.Contains(r.summary, fmt.Sprintf("message id of %d bytes exceeds the limit of 256 bytes", len(m.id))):
			t.Errorf("%s: %s at %s (%s), want failed_terminal for its id's length", m.name, r.status, r.stage, r.summary)
		}
	}
	for _, name := range []string{"telemesh_gateway_dead_lettered_total", "telemesh_gateway_naks_total"} {
		if v := f.gatewayMetric(name); v != 0 {
			t.Errorf("%s = %v, want 0: no message may fail its batch", name, v)
		}
	}
}

// TestRefusedStageRowIsolatesItsMessage makes Postgres refuse one
// message's stage row of one stage (a trigger stands in for any content it
// refuses). The rows of the stages before persist travel with their
// messages and are written in the persister's transaction, so the
// persister splits the batch until that message is alone and records it
// failed_terminal at persist with the reason and its persist row. The
// healthy neighbours complete with exactly one completed row per stage,
// nothing is NAKed and nothing is dead-lettered.
func TestRefusedStageRowIsolatesItsMessage(t *testing.T) {
	for _, stage := range []string{"ingress", "validate", "derive"} {
		t.Run(stage, func(t *testing.T) {
			f := newFixture(t, func(o *Options) {
				o.Gateway.BatchSize = 8
				o.Gateway.BatchAge = 5 * time.Second
			})
			if _, err := f.db.Pool.Exec(t.Context(), `
				create function refuse_poison() returns trigger language plpgsql as $$
				begin
					if new.stage = tg_argv[0] and new.status = 'completed' and exists (
						select 1 from ingestion_messages where id = new.message_id and source_message_id like 'poison%') then
						raise exception 'the % row of a poison message', new.stage using errcode = 'check_violation';
					end if;
					return new;
				end $$;
				create trigger refuse_poison before insert on ingestion_stage_logs
					for each row execute function refuse_poison('`+stage+`')`); err != nil {
				t.Fatal(err)
			}
			for i := range 8 {
				id := fmt.Sprintf("neighbour-%d", i)
				if i == 5 {
					id = "poison-1"
				}
				f.publish("devices.meter-01.telemetry", `{"temp_c": 1, "humidity": 40}`, id)
			}
			f.waitMessages(1, `source_message_id = 'poison-1' and status = 'failed_terminal' and halted_stage = 'persist'
				and error_summary like 'could not be stored: the `+stage+` row of a poison message'`)
			f.waitMessages(7, "source_message_id like 'neighbour-%' and status = 'completed'")
			f.waitIdle()
			rows, err := f.db.Pool.Query(t.Context(), `select m.source_message_id, string_agg(s.stage || ':' || s.status, ' ' order by s.stage)
				from ingestion_messages m join ingestion_stage_logs s on s.message_id = m.id
				group by 1 order by 1`)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
				var id, stages string
				err := r.Scan(&id, &stages)
				return id + ": " + stages, err
			})
			if err != nil {
				t.Fatal(err)
			}
			every := "derive:completed ingress:completed mutate:completed persist:completed publish:completed validate:completed"
			var want []string
			for i := range 8 {
				if i == 5 {
					want = append(want, "poison-1: persist:failed")
					continue
				}
				want = append(want, fmt.Sprintf("neighbour-%d: %s", i, every))
			}
			slices.Sort(want)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("stage rows per message:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
			if v := f.gatewayMetric("telemesh_gateway_naks_total"); v != 0 {
				t.Errorf("telemesh_gateway_naks_total = %v, want 0", v)
			}
			if v := f.gatewayMetric("telemesh_gateway_dead_lettered_total"); v != 0 {
				t.Errorf("telemesh_gateway_dead_lettered_total = %v, want 0", v)
			}
		})
	}
}

// TestPersisterIsolatesARefusedMessage makes Postgres refuse the telemetry
// row of one message of a batch (a check constraint stands in for any
// content it refuses). The persister stores the rest of the batch and
// records that message failed_terminal at persist with the reason; the
// chain never fails the batch, so nothing is resent or dead-lettered.
func TestPersisterIsolatesARefusedMessage(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Gateway.BatchSize = 4
		o.Gateway.BatchAge = 5 * time.Second
	})
	// temp_c 97 is mutated to 99.
	if _, err := f.db.Pool.Exec(t.Context(), `alter table device_telemetry_logs add constraint refuse_99
		check (coalesce(mutated_values->>'temp_c', '') <> '99')`); err != nil {
		t.Fatal(err)
	}
	f.publish("devices.meter-01.telemetry", `{"temp_c": 10}`, "kept-1")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 97}`, "refused-1")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 11}`, "kept-2")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 12}`, "kept-3")
	f.waitMessages(3, "source_message_id like 'kept-%' and status = 'completed'")
	f.waitMessages(1, `source_message_id = 'refused-1' and status = 'failed_terminal' and halted_stage = 'persist'
		and error_summary like 'could not be stored: %violates check constraint "refuse_99"%' and raw_payload = '{"temp_c": 97}'`)
	f.waitIdle()
	if n := f.count(`select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
		where m.source_message_id like 'kept-%' and t.processing_state = 'processed'`); n != 3 {
		t.Errorf("%d processed telemetry rows, want 3", n)
	}
	if n := f.count(`select count(*) from ingestion_stage_logs s join ingestion_messages m on m.id = s.message_id
		where m.source_message_id = 'refused-1' and s.stage = 'persist' and s.status = 'failed' and s.errors->>'reason' like 'could not be stored: %'`); n != 1 {
		t.Errorf("%d failed persist stage rows for the refused message, want 1", n)
	}
	if n := f.count(`select count(*) from ingestion_stage_logs where stage = 'ingress'`); n != 4 {
		t.Errorf("%d ingress stage rows, want one per message", n)
	}
	for _, name := range []string{"telemesh_gateway_dead_lettered_total", "telemesh_gateway_naks_total"} {
		if v := f.gatewayMetric(name); v != 0 {
			t.Errorf("%s = %v, want 0", name, v)
		}
	}
}

// storedSizes are the bytes one message left in each table and column.
type storedSizes struct {
	rawPayload    int  // ingestion_messages.raw_payload
	telemetryJSON *int // device_telemetry_logs.raw_payload, nil when null
	snapshots     int  // the largest stage-log input/output snapshot, change set or errors
	marked        int  // stage-log rows whose input snapshot is cut and marked so
	padInLogs     int  // stage-log columns holding the payload's padding
}

func (f *fixture) storedSizes(msgID, pad string) storedSizes {
	f.t.Helper()
	var s storedSizes
	if err := f.db.Pool.QueryRow(f.t.Context(), `select octet_length(m.raw_payload), octet_length(t.raw_payload::text)
		from ingestion_messages m left join device_telemetry_logs t on t.ingestion_message_id = m.id
		where m.source_message_id = $1`, msgID).Scan(&s.rawPayload, &s.telemetryJSON); err != nil {
		f.t.Fatal(err)
	}
	if err := f.db.Pool.QueryRow(f.t.Context(), `select
			coalesce(max(greatest(octet_length(s.input_snapshot::text), octet_length(s.output_snapshot::text),
				octet_length(s.change_set::text), octet_length(s.errors::text))), 0),
			count(*) filter (where s.input_snapshot->>'truncated' = 'true'),
			count(*) filter (where strpos(concat(s.input_snapshot::text, s.output_snapshot::text, s.change_set::text, s.errors::text), $2) > 0)
		from ingestion_stage_logs s join ingestion_messages m on m.id = s.message_id where m.source_message_id = $1`,
		msgID, pad).Scan(&s.snapshots, &s.marked, &s.padInLogs); err != nil {
		f.t.Fatal(err)
	}
	return s
}

// TestStoredPayloadLimits sends a 5 MiB payload and a 20,000-key payload
// within the byte limit through the mesh and measures what each leaves in
// every table: the message row keeps at most the stored-payload limit (the
// first bytes, the full size and a SHA-256 beyond it), the telemetry row
// keeps no copy of a payload the validator refused whole, and stage-log
// snapshots stay within their limit, cut and marked.
func TestStoredPayloadLimits(t *testing.T) {
	const (
		storedLimit   = 256 << 10
		snapshotLimit = 16 << 10
	)
	f := newFixture(t, nil)
	big := []byte(`{"temp_c": 1, "pad": "` + strings.Repeat("z", 5<<20-len(`{"temp_c": 1, "pad": ""}`)) + `"}`)
	var keys strings.Builder
	keys.WriteString(`{"temp_c":1`)
	for i := range 20000 {
		fmt.Fprintf(&keys, `,"q%s":0`, strconv.FormatInt(int64(i), 36))
	}
	keys.WriteString("}")
	if len(big) != 5<<20 || keys.Len() >= storedLimit {
		t.Fatalf("payloads of %d and %d bytes; want 5 MiB and one within the 256 KiB limits", len(big), keys.Len())
	}
	f.publish("devices.meter-01.telemetry", string(big), "stored-big")
	f.publish("devices.meter-01.telemetry", keys.String(), "stored-keys")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 10}`, "stored-normal")
	f.waitMessages(1, "source_message_id = 'stored-big' and status = 'failed_validation' and error_summary like '%payload_too_large%'")
	f.waitMessages(1, "source_message_id = 'stored-keys' and status = 'failed_validation' and error_summary like '%too_many_keys%'")
	f.waitMessages(1, "source_message_id = 'stored-normal' and status = 'completed'")
	f.waitIdle()

	t.Run("5 MiB", func(t *testing.T) {
		f := f.on(t)
		s := f.storedSizes("stored-big", strings.Repeat("z", 64))
		t.Logf("stored: message row %d bytes, telemetry jsonb %v, largest stage-log column %d bytes, %d stage-log columns holding the payload",
			s.rawPayload, deref(s.telemetryJSON), s.snapshots, s.padInLogs)
		if s.rawPayload != storedLimit {
			t.Errorf("ingestion_messages.raw_payload holds %d bytes, want the first %d", s.rawPayload, storedLimit)
		}
		if s.telemetryJSON != nil {
			t.Errorf("device_telemetry_logs.raw_payload holds %d bytes, want null", *s.telemetryJSON)
		}
		if s.snapshots > snapshotLimit || s.padInLogs != 0 {
			t.Errorf("stage logs: largest column %d bytes (limit %d), %d holding the payload; want none", s.snapshots, snapshotLimit, s.padInLogs)
		}
		sum := sha256.Sum256(big)
		var (
			head, hash []byte
			size       *int
			summary    string
			omitted    string
		)
		if err := f.db.Pool.QueryRow(t.Context(), `select m.raw_payload, m.raw_payload_bytes, m.raw_payload_sha256, m.error_summary,
				coalesce((select s.input_snapshot->'payload'::text from ingestion_stage_logs s where s.message_id = m.id and s.stage = 'validate'), 'null')
			from ingestion_messages m where m.source_message_id = 'stored-big'`).Scan(&head, &size, &hash, &summary, &omitted); err != nil {
			t.Fatal(err)
		}
		if string(head) != string(big[:storedLimit]) || size == nil || *size != len(big) || hex.EncodeToString(hash) != hex.EncodeToString(sum[:]) {
			t.Errorf("message row keeps %d bytes (the first: %v), size %v, sha256 %x; want the first %d, %d and %x",
				len(head), string(head) == string(big[:len(head)]), deref(size), hash, storedLimit, len(big), sum)
		}
		want := fmt.Sprintf("payload of %d bytes exceeds the stored-payload limit %d; first %d bytes kept, sha256 %x", len(big), storedLimit, storedLimit, sum)
		if !strings.Contains(summary, want) {
			t.Errorf("error summary %q, want it to say %q", summary, want)
		}
		if omitted != fmt.Sprintf(`{"bytes": %d, "omitted": true}`, len(big)) {
			t.Errorf("validate stage row's payload snapshot = %s, want only its size", omitted)
		}
	})
	t.Run("20,000 keys", func(t *testing.T) {
		f := f.on(t)
		s := f.storedSizes("stored-keys", "q10")
		t.Logf("stored: message row %d bytes, telemetry jsonb %v, largest stage-log column %d bytes, %d stage-log columns holding the payload",
			s.rawPayload, deref(s.telemetryJSON), s.snapshots, s.padInLogs)
		if s.rawPayload != keys.Len() {
			t.Errorf("ingestion_messages.raw_payload holds %d bytes, want all %d", s.rawPayload, keys.Len())
		}
		if s.telemetryJSON != nil {
			t.Errorf("device_telemetry_logs.raw_payload holds %d bytes of a payload refused whole, want null", *s.telemetryJSON)
		}
		if s.snapshots > snapshotLimit || s.marked != 1 {
			t.Errorf("stage logs: largest column %d bytes (limit %d), %d input snapshots marked as cut; want 1", s.snapshots, snapshotLimit, s.marked)
		}
		if n := f.count(`select count(*) from ingestion_messages where source_message_id = 'stored-keys' and raw_payload_bytes is null and raw_payload_sha256 is null`); n != 1 {
			t.Errorf("a payload within the limit has a size and hash of a cut one")
		}
	})
	t.Run("a normal payload is kept whole in both rows", func(t *testing.T) {
		f := f.on(t)
		s := f.storedSizes("stored-normal", "zzzz")
		if s.rawPayload != len(`{"temp_c": 10}`) || s.telemetryJSON == nil {
			t.Errorf("message row %d bytes, telemetry jsonb %v; want both", s.rawPayload, deref(s.telemetryJSON))
		}
	})
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
