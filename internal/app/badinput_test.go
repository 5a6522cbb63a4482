package app

import (
	"bufio"
	"crypto/sha256"

	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	"github.com/telemesh/telemesh/internal/testutil"
)

// badOutcome is what must become of a bad message.
type badOutcome int

const (
	// ignored: the gateway's subject filter drops it; nothing is stored.
	ignored badOutcome = iota + 1
	// neverCaptured: NATS keeps it out of the stream (a $SYS subject);
	// nothing is stored.
	neverCaptured
	// refused: NATS refuses the publish itself; the publisher gets the error.
	refused
	// failedTerminal: an ingestion_messages row, failed_terminal, with the
	// reason, and no telemetry row.
	failedTerminal
	// failedValidation: an ingestion_messages row, failed_validation, and
	// a telemetry row kept as evidence with processing_state invalid.
	failedValidation
	// completed: not bad after all (an odd but valid payload): processed
	// normally.
	completed
)

// badCase is one bad message and what must become of it.
type badCase struct {
	name    string
	subject string // devices.meter-01.telemetry when empty
	payload func() []byte
	// msgID is the Nats-Msg-Id header; when empty a unique one is made.
	msgID string
	// core publishes without JetStream, for subjects no stream captures.
	core bool
	want badOutcome
	// stage is the halted_stage and reason a LIKE pattern of the error
	// summary, for failed outcomes.
	stage, reason string
	// label is the stored value of the label parameter, when set.
	label string
}

func fixed(s string) func() []byte { return func() []byte { return []byte(s) } }

// nestedIn returns an object whose x holds n nested arrays.
func nestedIn(n int) func() []byte {
	return func() []byte {
		return []byte(`{"temp_c": 1, "x": ` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}
}

// manyKeys returns an object of n keys besides temp_c.
func manyKeys(n int) func() []byte {
	return func() []byte {
		var b strings.Builder
		b.WriteString(`{"temp_c": 1`)
		for i := range n {
			fmt.Fprintf(&b, `, "k%d": %d`, i, i)
		}
		b.WriteString("}")
		return []byte(b.String())
	}
}

// padded returns a valid reading padded to about n bytes.
func padded(n int) func() []byte {
	return func() []byte {
		return []byte(`{"temp_c": 1, "pad": "` + strings.Repeat("x", n) + `"}`)
	}
}

const sqlLike = `x';drop_table_devices;--`

// badCases are the bad inputs of the suite, each with the outcome it must
// have. Subjects with spaces are refused by the NATS client, so the SQL-like
// subject token has none.
var badCases = []badCase{
	{name: "malformed JSON", payload: fixed(`{"temp_c": 1,`), want: failedTerminal, stage: "ingress", reason: "payload is not a JSON object: unexpected end of JSON input%"},
	{name: "not JSON at all", payload: fixed(`temperature=21`), want: failedTerminal, stage: "ingress", reason: "%not a JSON object: invalid character 'e' in literal true%"},
	{name: "two documents", payload: fixed(`{"temp_c": 1} {"temp_c": 2}`), want: failedTerminal, stage: "ingress", reason: "%after top-level value%"},
	{name: "empty payload", payload: fixed(``), want: failedTerminal, stage: "ingress", reason: "%not a JSON object: it is empty"},
	{name: "top-level array", payload: fixed(`[{"temp_c": 1}]`), want: failedTerminal, stage: "ingress", reason: "%not a JSON object: it is a JSON array"},
	{name: "binary with NUL bytes", payload: fixed("\x00\x01\xff\xfe{"), want: failedTerminal, stage: "ingress", reason: "%not a JSON object: invalid character%"},
	{name: "oversize 300 KiB", payload: padded(300 << 10), want: failedValidation, stage: "validate", reason: "%payload: payload_too_large%"},
	{name: "oversize 5 MiB", payload: padded(5 << 20), want: failedValidation, stage: "validate", reason: "%payload: payload_too_large%"},
	{name: "oversize beyond the NATS limit", payload: padded(9 << 20), want: refused},
	{name: "10,000 nested arrays at the top", payload: func() []byte { return []byte(strings.Repeat("[", 10000) + strings.Repeat("]", 10000)) },
		want: failedTerminal, stage: "ingress", reason: "%not a JSON object: it is a JSON array"},
	{name: "10,001 nested arrays at the top", payload: func() []byte { return []byte(strings.Repeat("[", 10001) + strings.Repeat("]", 10001)) },
		want: failedTerminal, stage: "ingress", reason: "%exceeded max depth%"},
	{name: "10,000 nested arrays in an object", payload: nestedIn(10000), want: failedTerminal, stage: "ingress", reason: "%exceeded max depth%"},
	{name: "100,000 nested arrays in an object", payload: nestedIn(100000), want: failedTerminal, stage: "ingress", reason: "%exceeded max depth%"},
	{name: "100,000 unclosed arrays", payload: func() []byte { return []byte(`{"temp_c": 1, "x": ` + strings.Repeat("[", 100000)) },
		want: failedTerminal, stage: "ingress", reason: "%exceeded max depth%"},
	{name: "40 nested arrays in an object", payload: nestedIn(40), want: failedValidation, stage: "validate", reason: "%payload: too_deep%"},
	{name: "bare NaN", payload: fixed(`{"temp_c": NaN}`), want: failedTerminal, stage: "ingress", reason: "%invalid character 'N'%"},
	{name: "bare Infinity", payload: fixed(`{"temp_c": Infinity}`), want: failedTerminal, stage: "ingress", reason: "%invalid character 'I'%"},
	{name: "bare -Infinity", payload: fixed(`{"temp_c": -Infinity}`), want: failedTerminal, stage: "ingress", reason: "%invalid character 'I' in numeric literal%"},
	{name: "NaN as a string", payload: fixed(`{"temp_c": "NaN"}`), want: failedValidation, stage: "validate", reason: "%temp_c: type%"},
	{name: "Infinity as a string", payload: fixed(`{"temp_c": "Infinity"}`), want: failedValidation, stage: "validate", reason: "%temp_c: type%"},
	{name: "non-UTF-8 bytes in a string", payload: fixed("{\"temp_c\": 1, \"note\": \"\xff\xfe\"}"), want: failedValidation, stage: "validate", reason: "%payload: invalid_utf8%"},
	{name: "non-UTF-8 bytes in a key", payload: fixed("{\"temp_c\": 1, \"\xc3\x28\": 2}"), want: failedValidation, stage: "validate", reason: "%payload: invalid_utf8%"},
	{name: "10,000 keys", payload: manyKeys(10000), want: failedValidation, stage: "validate", reason: "%payload: too_many_keys%"},
	{name: "1e400", payload: fixed(`{"temp_c": 1e400}`), want: failedValidation, stage: "validate", reason: "%temp_c: invalid_number%"},
	{name: "-1e400", payload: fixed(`{"temp_c": -1e400}`), want: failedValidation, stage: "validate", reason: "%temp_c: invalid_number%"},
	{name: "huge integer", payload: fixed(`{"temp_c": 123456789012345678901234567890123456789}`), want: failedValidation, stage: "validate", reason: "%temp_c: max%"},
	{name: "huge integer message id", payload: fixed(`{"message_id": 123456789012345678901234567890, "temp_c": 1}`), want: completed},
	{name: "NUL in a string value", payload: fixed(`{"temp_c": 1, "note": "a\u0000b"}`), want: completed},
	{name: "NUL in a string parameter", payload: fixed(`{"temp_c": 1, "label": "a\u0000b"}`), want: completed, label: "a\uFFFDb"},
	{name: "escaped backslash before u0000", payload: fixed(`{"temp_c": 1, "label": "a\\u0000b"}`), want: completed, label: `a\u0000b`},
	{name: "NUL in the payload message id", payload: fixed(`{"message_id": "a\u0000b", "temp_c": 1}`), msgID: "-",
		want: failedTerminal, stage: "ingress", reason: "%message id%"},
	{name: "NUL in the Nats-Msg-Id header", payload: fixed(`{"temp_c": 1}`), msgID: "bad\x00id", want: failedTerminal, stage: "ingress", reason: "%message id%"},
	{name: "non-UTF-8 Nats-Msg-Id header", payload: fixed(`{"temp_c": 1}`), msgID: "bad\xffid", want: failedTerminal, stage: "ingress", reason: "%message id%"},
	{name: "SQL-like JSON key", payload: fixed(`{"temp_c": 1, "'; drop table devices;--": 1, "x'); delete from ingestion_messages;--": "y"}`), want: completed},
	{name: "SQL-like parameter key and path", payload: fixed(`{"temp_c": 1, "x'; drop table devices;--": "v"}`), want: completed},
	{name: "SQL-like message id", payload: fixed(`{"temp_c": 1}`), msgID: "'; drop table ingestion_messages;--", want: completed},
	{name: "SQL-like device id", subject: "devices." + sqlLike + ".telemetry", payload: fixed(`{"temp_c": 1}`),
		want: failedTerminal, stage: "ingress", reason: "%unknown device%"},
	{name: "unknown topic", subject: "devices.meter-01.nosuchtopic", payload: fixed(`{"temp_c": 1}`), want: failedTerminal, stage: "ingress", reason: "%unknown topic%"},
	{name: "unknown device", subject: "devices.nosuch.telemetry", payload: fixed(`{"temp_c": 1}`), want: failedTerminal, stage: "ingress", reason: "%unknown device%"},
	{name: "too many tokens", subject: "devices.meter-01.telemetry.extra", payload: fixed(`{"temp_c": 1}`), want: failedTerminal, stage: "ingress", reason: "%not of the form%"},
	{name: "wildcard token", subject: "devices.*.telemetry", payload: fixed(`{"temp_c": 1}`), want: failedTerminal, stage: "ingress", reason: "%unknown device%"},
	{name: "non-UTF-8 subject", subject: "devices.\xff\xfe.telemetry", payload: fixed(`{"temp_c": 1}`), want: failedTerminal, stage: "ingress", reason: "%subject%not valid UTF-8%"},
	{name: "NUL in the subject", subject: "devices.a\x00b.telemetry", payload: fixed(`{"temp_c": 1}`), want: failedTerminal, stage: "ingress", reason: "%subject%NUL%"},
	{name: "_INBOX subject", subject: "_INBOX.badinput.x", payload: fixed(`{"temp_c": 1}`), want: ignored},
	{name: "$JS subject", subject: "$JS.EVENT.badinput.x", payload: fixed(`{"temp_c": 1}`), want: ignored},
	{name: "$KV subject", subject: "$KV.badinput.x", payload: fixed(`{"temp_c": 1}`), want: ignored},
	{name: "$SYS subject", subject: "$SYS.badinput.x", payload: fixed(`{"temp_c": 1}`), core: true, want: neverCaptured},
	{name: "$JS.API subject", subject: "$JS.API.INFO", payload: fixed(`{"temp_c": 1}`), core: true, want: neverCaptured},
}

// badInputSubjects widen the stream so that internal subjects a careless
// scope would capture reach the gateway, which must ignore them. A stream
// cannot capture $SYS or $JS.API subjects at all.
var badInputSubjects = []string{"devices.>", "_INBOX.badinput.>", "$JS.EVENT.badinput.>", "$KV.badinput.>"}

// newBadInputFixture is the standard fleet with a wide stream, a quick dead
// letter (so a mishandled message shows up within the test's waits rather
// than after minutes of redeliveries) and two more parameters: a free
// string, and one whose key and json_path look like SQL.
func newBadInputFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, func(o *Options) {
		o.Gateway.Subjects = badInputSubjects
		o.Gateway.MaxDeliver = 3
		o.Gateway.Backoff = []time.Duration{100 * time.Millisecond}
	})
	if _, err := f.db.Pool.Exec(t.Context(), `insert into parameter_definitions (device_type_topic_id, key, json_path, data_type, sequence)
		select t.id, k.key, k.path, 'string', 10 from device_type_topics t join device_types d on d.id = t.device_type_id,
			(values ('label', '$.label'), ($1, $2)) as k(key, path)
		where d.organization_id = $3`, "x'; drop table devices;--", `$['x\'; drop table devices;--']`, f.acme); err != nil {
		t.Fatal(err)
	}
	// The catalog follows the change within a second (LISTEN/NOTIFY).
	testutil.Eventually(t, meshWait, "new parameters in use", func() error {
		f.publish("devices.meter-01.telemetry", `{"temp_c": 1, "label": "ready"}`, "")
		if f.count(`select count(*) from device_telemetry_logs where mutated_values ? 'label'`) == 0 {
			return errors.New("no row with a label yet")
		}
		return nil
	})
	f.waitIdle()
	return f
}

// published is where one message of the suite went.
type published struct {
	subject string
	seq     uint64
	msgID   string
	err     error
}

// publishBad publishes one case's message.
func (f *fixture) publishBad(c badCase, msgID string) published {
	f.t.Helper()
	subject := c.subject
	if subject == "" {
		subject = "devices.meter-01.telemetry"
	}
	m := nats.NewMsg(subject)
	m.Data = c.payload()
	if msgID != "-" {
		m.Header.Set("Nats-Msg-Id", msgID)
	}
	p := published{subject: subject, msgID: msgID}
	if c.core {
		p.err = f.nc.PublishMsg(m)
		if p.err == nil {
			p.err = f.nc.Flush()
		}
		return p
	}
	ack, err := f.js.PublishMsg(f.t.Context(), m)
	if err != nil {
		p.err = err
		return p
	}
	p.seq = ack.Sequence
	return p
}

// check waits for the case's outcome and asserts it.
func (f *fixture) checkBad(c badCase, p published) {
	f.t.Helper()
	switch c.want {
	case refused:
		if p.err == nil {
			f.t.Errorf("publish succeeded (sequence %d); want NATS to refuse it", p.seq)
		}
		return
	case neverCaptured:
		if p.err != nil {
			f.t.Fatalf("core publish: %v", p.err)
		}
		if n := f.count(`select count(*) from ingestion_messages where source_subject = $1`, p.subject); n != 0 {
			f.t.Errorf("%d messages stored for %s", n, p.subject)
		}
		return
	}
	if p.err != nil {
		f.t.Fatalf("publish: %v", p.err)
	}
	if c.want == ignored {
		// The message is taken and terminated without a trace.
		f.waitIdle()
		if n := f.count(`select count(*) from ingestion_messages where stream_sequence = $1`, int64(p.seq)); n != 0 {
			f.t.Errorf("%d messages stored for ignored subject %s", n, p.subject)
		}
		if n := f.count(`select count(*) from ingestion_stage_logs where dedupe_key like $1`, "%:"+strconv.FormatUint(p.seq, 10)); n != 0 {
			f.t.Errorf("%d stage rows for ignored subject %s", n, p.subject)
		}
		return
	}
	status := map[badOutcome]string{failedTerminal: "failed_terminal", failedValidation: "failed_validation", completed: "completed"}[c.want]
	f.waitCount(1, fmt.Sprintf("sequence %d is %s", p.seq, status), `select count(*) from ingestion_messages where stream_sequence = $1`, int64(p.seq))
	var got, stage, summary string
	var (
		raw, sum []byte
		size     *int
	)
	if err := f.db.Pool.QueryRow(f.t.Context(), `select status, coalesce(halted_stage, ''), coalesce(error_summary, ''), raw_payload,
			raw_payload_bytes, raw_payload_sha256
		from ingestion_messages where stream_sequence = $1`, int64(p.seq)).Scan(&got, &stage, &summary, &raw, &size, &sum); err != nil {
		f.t.Fatal(err)
	}
	if got != status {
		f.t.Fatalf("status %s (%s: %s), want %s", got, stage, summary, status)
	}
	// Beyond the stored-payload limit the first bytes are kept, with the
	// full size and the SHA-256.
	payload := c.payload()
	want, wantSum := payload, sha256.Sum256(payload)
	if len(payload) > storedPayloadLimit {
		want = payload[:storedPayloadLimit]
		if size == nil || *size != len(payload) || string(sum) != string(wantSum[:]) {
			f.t.Errorf("a payload of %d bytes stored with size %v and sha256 %x, want %d and %x", len(payload), deref(size), sum, len(payload), wantSum)
		}
	} else if size != nil || sum != nil {
		f.t.Errorf("a payload of %d bytes, kept whole, stored with size %v and sha256 %x", len(payload), deref(size), sum)
	}
	if string(raw) != string(want) {
		f.t.Errorf("raw payload of %d bytes stored, want the %d bytes sent", len(raw), len(want))
	}
	telemetry := f.count(`select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
		where m.stream_sequence = $1`, int64(p.seq))
	switch c.want {
	case failedTerminal:
		if telemetry != 0 {
			f.t.Errorf("%d telemetry rows for a failed_terminal message", telemetry)
		}
	case failedValidation:
		if telemetry != 1 {
			f.t.Errorf("%d telemetry rows, want the invalid one kept as evidence", telemetry)
		} else if r := f.telemetryOf("m.stream_sequence = $1", int64(p.seq)); r.State != "invalid" || len(r.Errors) == 0 {
			f.t.Errorf("telemetry row %s with errors %v, want invalid with its reasons", r.State, r.Errors)
		}
	case completed:
		f.waitCount(1, "row processed", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
				where m.stream_sequence = $1 and t.processing_state = 'processed'`, int64(p.seq))
		if c.label != "" {
			if r := f.telemetryOf("m.stream_sequence = $1", int64(p.seq)); r.Mutated["label"] != c.label {
				f.t.Errorf("label stored as %q, want %q", r.Mutated["label"], c.label)
			}
		}
		return
	}
	if stage != c.stage {
		f.t.Errorf("halted at %q (%s), want %s", stage, summary, c.stage)
	}
	var ok bool
	if err := f.db.Pool.QueryRow(f.t.Context(), `select $1 like $2`, summary, c.reason).Scan(&ok); err != nil || !ok {
		f.t.Errorf("error summary %q, want it like %q", summary, c.reason)
	}
}

// waitGood waits until the good message msgID is completed and its row
// processed.
func (f *fixture) waitGood(msgID string) {
	f.t.Helper()
	f.waitMessages(1, "source_message_id = $1 and status = 'completed'", msgID)
	f.waitCount(1, msgID+" processed", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id = $1 and t.processing_state = 'processed'`, msgID)
}

const goodPayload = `{"temp_c": 10, "humidity": 50}`

// storedPayloadLimit is the default stored-payload limit.
const storedPayloadLimit = 256 << 10

// TestBadInput sends each bad message between two good ones through a live
// mesh: the bad one ends with its recorded reason (or is ignored by the
// subject filter), the good ones are processed normally, and no stage
// fails.
func TestBadInput(t *testing.T) {
	f := newBadInputFixture(t)
	devices := f.count(`select count(*) from devices`)
	for i, c := range badCases {
		t.Run(c.name, func(t *testing.T) {
			f := f.on(t)
			before, after := fmt.Sprintf("bi-%d-before", i), fmt.Sprintf("bi-%d-after", i)
			msgID := c.msgID
			if msgID == "" {
				msgID = fmt.Sprintf("bi-%d", i)
			}
			f.publish("devices.meter-01.telemetry", goodPayload, before)
			p := f.publishBad(c, msgID)
			f.publish("devices.meter-01.telemetry", goodPayload, after)
			f.checkBad(c, p)
			f.waitGood(before)
			f.waitGood(after)
		})
	}
	t.Run("all at once", func(t *testing.T) {
		// Every bad message again, interleaved with good ones in one burst,
		// so batches mix them.
		f := f.on(t)
		var sent []published
		for i, c := range badCases {
			msgID := c.msgID
			switch msgID {
			case "":
				msgID = fmt.Sprintf("burst-%d", i)
			case "-":
			default:
				msgID += "-burst"
			}
			f.publish("devices.meter-01.telemetry", goodPayload, fmt.Sprintf("burst-good-%d", i))
			sent = append(sent, f.publishBad(c, msgID))
		}
		f.publish("devices.meter-01.telemetry", goodPayload, "burst-good-last")
		f.waitMessages(len(badCases)+1, "source_message_id like 'burst-good-%' and status = 'completed'")
		for i, c := range badCases {
			if c.payload == nil || strings.Contains(c.name, "payload message id") || strings.Contains(c.name, "huge integer message id") {
				// Its id is in the payload, so this copy is a duplicate of
				// the first.
				continue
			}
			t.Run(c.name, func(t *testing.T) { f.on(t).checkBad(c, sent[i]) })
		}
		f.waitIdle()
	})
	if n := f.count(`select count(*) from devices`); n != devices {
		t.Errorf("%d devices after the suite, want %d", n, devices)
	}
	t.Run("no stage failed a call and no message was retried", func(t *testing.T) {
		for _, stage := range Stages {
			for series, n := range scrape(t, f.mesh.Admin[stage]) {
				if strings.HasPrefix(series, "grpc_server_handled_total{") && !strings.Contains(series, `grpc_code="OK"`) &&
					!strings.Contains(series, "grpc.health") && n > 0 {
					t.Errorf("%s: %s %v", stage, series, n)
				}
			}
		}
		// Every bad message was settled on its first delivery: none was
		// NAKed or dead-lettered, which would mean it failed its batch.
		gw := scrape(t, f.mesh.Admin[Gateway])
		for _, name := range []string{"telemesh_gateway_naks_total", "telemesh_gateway_dead_lettered_total"} {
			if gw[name] != 0 {
				t.Errorf("%s = %v, want 0", name, gw[name])
			}
		}
		ignoredCases := 0
		for _, c := range badCases {
			if c.want == ignored {
				ignoredCases++
			}
		}
		if got := gw["telemesh_gateway_ignored_total"]; got != float64(2*ignoredCases) {
			t.Errorf("telemesh_gateway_ignored_total = %v, want %d", got, 2*ignoredCases)
		}
	})
}

// scrape reads a stage's metrics from its admin port, by series.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		n, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = n
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestIngestIgnoresInternalSubjects checks the gateway's Ingest call refuses
// the subjects its consumer ignores.
func TestIngestIgnoresInternalSubjects(t *testing.T) {
	f := newFixture(t, nil)
	conn, err := grpc.NewClient(f.mesh.GRPC[Gateway], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := gatewayv1.NewGatewayServiceClient(conn)
	for _, subject := range []string{"$SYS.ACCOUNT.x.CONNECT", "$JS.API.STREAM.INFO.TELEMETRY", "_INBOX.abc", "$KV.device-states.x", "iot.v1.analytics.local.acme.x.telemetry"} {
		t.Run(subject, func(t *testing.T) {
			_, err := client.Ingest(t.Context(), &gatewayv1.IngestRequest{Subject: subject, Payload: []byte(`{"temp_c": 1}`)})
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("Ingest = %v, want InvalidArgument", err)
			}
		})
	}
	if n := f.count(`select count(*) from ingestion_messages`); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}
