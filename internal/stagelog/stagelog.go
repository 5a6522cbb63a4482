// Package stagelog records what a stage did to each message in
// ingestion_stage_logs, one round trip per batch.
package stagelog

import (
	"github.com/prometheus/client_golang/prometheus"

	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipeline"
)

// Mode says which entries are written.
type Mode string

// The modes of the system telemesh replaces.
const (
	// ModeAll writes every entry.
	ModeAll Mode = "all"
	// ModeSampled writes every failure and a deterministic fraction of the
	// rest, chosen by the dedupe key so a message is logged at every stage or
	// at none.
	ModeSampled Mode = "sampled"
	// ModeFailures writes only entries whose status is not completed.
	ModeFailures Mode = "failures"
)

// Stage-log statuses: the names of [pipeline.StageStatus], as the string
// an [Entry] holds. Only completed counts as success for the failures mode.
const (
	// StatusCompleted is a stage that handled the message normally.
	StatusCompleted = string(pipeline.StageCompleted)
	// StatusHalted is a stage that stopped the message (validation errors,
	// an inactive device, an unknown topic); the reasons are in errors.
	StatusHalted = string(pipeline.StageHalted)
	// StatusDuplicate is a message whose original already reached persist.
	StatusDuplicate = string(pipeline.StageDuplicate)
	// StatusUnresolved is a derive stage that left values unresolved.
	StatusUnresolved = string(pipeline.StageUnresolved)
	// StatusFailed is a stage that failed (a publish that did not happen).
	StatusFailed = string(pipeline.StageFailed)
	// StatusParked is a message held by its organization's switch.
	StatusParked = string(pipeline.StageParked)
	// StatusRetrying is a delivery that failed for a reason that may pass
	// (a stage or Postgres unreachable, a deadline); it is redelivered.
	StatusRetrying = string(pipeline.StageRetrying)
)

// StatusName returns the stored name of a stage-log status, or "" for none.
func StatusName(s telemetryv1.StageStatus) string {
	if s == telemetryv1.StageStatus_STAGE_STATUS_UNSPECIFIED {
		return ""
	}
	return statusNames[s]
}

// StatusFromName returns the status stored as name.
func StatusFromName(name string) telemetryv1.StageStatus {
	return statusesByName[name]
}

// StageFromName returns the stage stored as name.
func StageFromName(name string) telemetryv1.Stage {
	return stagesByName[name]
}

// statusesByName and stagesByName are the stored names' statuses and
// stages: every stage row is made with both, so neither is looked up by
// building the enum's own name each time.
var (
	statusesByName = func() map[string]telemetryv1.StageStatus {
		out := make(map[string]telemetryv1.StageStatus, len(statusNames))
		for s, n := range statusNames {
			out[n] = s
		}
		return out
	}()
	stagesByName = func() map[string]telemetryv1.Stage {
		out := map[string]telemetryv1.Stage{}
		for v, name := range telemetryv1.Stage_name {
			if v != 0 {
				out[strings.ToLower(strings.TrimPrefix(name, "STAGE_"))] = telemetryv1.Stage(v)
			}
		}
		return out
	}()
)

// statusNames are the stored names of the stage-log statuses, as the
// status check constraint of ingestion_stage_logs lists them.
var statusNames = func() map[telemetryv1.StageStatus]string {
	out := map[telemetryv1.StageStatus]string{}
	for v, name := range telemetryv1.StageStatus_name {
		if v != 0 {
			out[telemetryv1.StageStatus(v)] = strings.ToLower(strings.TrimPrefix(name, "STAGE_STATUS_"))
		}
	}
	return out
}()

// ErrMode is returned by [New] for an unknown mode or a rate outside 0..1.
var ErrMode = errors.New("unknown stage-log mode")

// Entry is one row of ingestion_stage_logs.
type Entry struct {
	MessageID uuid.UUID
	DedupeKey string
	// Stage is ingress, validate, mutate, derive, persist or publish.
	Stage string
	// Status is completed for normal handling; anything else counts as a
	// failure for the failures mode.
	Status   string
	Duration time.Duration
	Attempt  int
	// Input and Output are snapshots; they are kept only for entries that
	// are not completed, where an operator needs them to explain the message.
	// A map's "payload" member is the message's payload: beyond the
	// writer's payload limit only its size is written. Each snapshot, the
	// change set and the errors are bounded by the writer's snapshot limit
	// (see [Limits]).
	Input  any
	Output any
	// ChangeSet says what the stage changed (mutated or derived values).
	ChangeSet any
	// Errors holds the reasons of a failure.
	Errors any
	// Code is the stable code of why the stage did not complete the
	// message (a constant of package reason), set by the stage that decided
	// it; empty for a completed entry. Operators group failures by it.
	Code string
	// At is when the stage finished; zero means now.
	At time.Time
	// Repeat says the stage already recorded a failure of this message at
	// an earlier attempt of its own (a publish the retry loop tries again
	// after it failed). The row is written and counted as any other, and
	// left out where messages rather than attempts are counted.
	Repeat bool
}

// Limits bound what one stage-log row keeps of a message, so a device
// cannot fill the database through the stage logs.
type Limits struct {
	// SnapshotBytes bounds each of a row's input and output snapshots,
	// change set and errors, as JSON text. A longer one is written as
	// {"truncated": true, "bytes": N, "head": "<its first bytes>"} within
	// the limit.
	SnapshotBytes int
	// PayloadBytes is the stored-payload limit: a snapshot's "payload"
	// longer than it is written as {"omitted": true, "bytes": N}, since
	// not even the message row keeps all of it.
	PayloadBytes int
}

// DefaultLimits returns 16 KiB per snapshot and the 256 KiB stored-payload
// limit.
func DefaultLimits() Limits {
	return Limits{SnapshotBytes: 16 << 10, PayloadBytes: 256 << 10}
}

// minSnapshotBytes leaves room for the truncation marker.
const minSnapshotBytes = 256

// Writer writes entries according to a mode.
type Writer struct {
	mode     Mode
	rate     float64
	instance string
	limits   Limits
	// rows counts the rows this process's stages make, kept or not.
	rows *prometheus.CounterVec
}

// WithMetrics returns a copy of the writer that counts every row its stage
// makes, written or only counted by the mode, on reg as
// telemesh_stage_messages_total{stage,status,reason}: what each stage did to
// how many messages, attempts included.
func (w *Writer) WithMetrics(reg prometheus.Registerer) (*Writer, error) {
	c := *w
	c.rows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "telemesh_stage_messages_total",
		Help: "Messages each stage handled, by stage, stage-log status and reason code (every attempt counts).",
	}, []string{"stage", "status", "reason"})
	if err := reg.Register(c.rows); err != nil {
		return nil, fmt.Errorf("register stage metrics: %w", err)
	}
	return &c, nil
}

// New returns a writer with [DefaultLimits]. rate is used by the sampled
// mode only.
func New(mode Mode, rate float64, instance string) (*Writer, error) {
	switch mode {
	case ModeAll, ModeSampled, ModeFailures:
	default:
		return nil, fmt.Errorf("%w: %q", ErrMode, mode)
	}
	if rate < 0 || rate > 1 {
		return nil, fmt.Errorf("%w: sample rate %v outside 0..1", ErrMode, rate)
	}
	return &Writer{mode: mode, rate: rate, instance: instance, limits: DefaultLimits()}, nil
}

// WithLimits returns a copy of the writer that keeps to l; a zero field
// keeps the default.
func (w *Writer) WithLimits(l Limits) *Writer {
	c := *w
	def := DefaultLimits()
	if l.SnapshotBytes <= 0 {
		l.SnapshotBytes = def.SnapshotBytes
	}
	if l.PayloadBytes <= 0 {
		l.PayloadBytes = def.PayloadBytes
	}
	l.SnapshotBytes = max(l.SnapshotBytes, minSnapshotBytes)
	c.limits = l
	return &c
}

// Keep reports whether the entry is written in the writer's mode.
func (w *Writer) Keep(e *Entry) bool {
	failed := e.Status != StatusCompleted
	switch w.mode {
	case ModeFailures:
		return failed
	case ModeSampled:
		return failed || Sampled(e.DedupeKey, w.rate)
	default:
		return true
	}
}

// Sampled reports whether the dedupe key falls in the sampled fraction. It is
// deterministic, so every stage and replica picks the same messages.
func Sampled(dedupeKey string, rate float64) bool {
	if rate >= 1 {
		return true
	}
	if rate <= 0 {
		return false
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(dedupeKey))
	return float64(h.Sum64()>>11)/float64(1<<53) < rate
}

// columns are the columns of ingestion_stage_logs the writer fills, in
// the order [Batch.copyRows] writes them.
var columns = []string{
	"message_id", "dedupe_key", "stage", "status", "duration_us", "attempt", "instance",
	"input_snapshot", "output_snapshot", "change_set", "errors", "created_at", "reason_code",
}

// Write writes the entries the mode keeps, with the counts of
// ingestion_stage_counts, in one round trip of COPY and one statement. q is
// a pool, or the transaction of the stage's own writes so all commit
// together. Every field a message can fill is bounded and cleaned first
// (the dedupe key, snapshots, change set and errors), so what one message
// holds cannot make Postgres refuse the batch.
func (w *Writer) Write(ctx context.Context, q Querier, entries []Entry) error {
	b := w.Batch()
	for i := range entries {
		b.Add(&entries[i])
	}
	return b.Write(ctx, q)
}

// Record returns the row e makes, bounded and encoded, for its message to
// carry to the stage that writes it ([Batch.AddCarried]). When the
// writer's mode leaves the row out it is only counted: the record says so
// and holds what a count needs. The mode of the stage that made the row
// decides, whichever stage writes it.
func (w *Writer) Record(e *Entry) *telemetryv1.StageRecord {
	at := e.At
	if at.IsZero() {
		at = time.Now()
	}
	r := &telemetryv1.StageRecord{
		Stage: StageFromName(e.Stage), Status: StatusFromName(e.Status),
		DurationUs: max(e.Duration.Microseconds(), 0), AtUs: at.UnixMicro(), ReasonCode: e.Code,
	}
	if w.rows != nil {
		w.rows.WithLabelValues(e.Stage, e.Status, e.Code).Inc()
	}
	if !w.Keep(e) {
		r.CountOnly = true
		return r
	}
	r.Attempt, r.Instance = uint32(min(max(e.Attempt, 1), math.MaxInt16)), w.instance
	r.ChangeSet, r.Errors = w.snapshot(e.ChangeSet), w.snapshot(e.Errors)
	if e.Status != StatusCompleted {
		r.Input, r.Output = w.snapshot(w.withoutLongPayload(e.Input)), w.snapshot(w.withoutLongPayload(e.Output))
	}
	return r
}

// Batch collects the stage rows of one transaction: a stage's own entries
// and the rows its messages carried from the stages before it.
type Batch struct {
	w      *Writer
	rows   []row
	counts map[countKey]*Count
}

// Count is how many stage rows of one minute, stage, status and reason
// code were written, and how long they took.
type Count struct {
	Rows int64
	// Repeats counts the rows that were [Entry.Repeat].
	Repeats int64
	// Durations is a histogram of the rows' durations: see [Bucket].
	Durations []int64
	// errs are the errors of the latest row that is not completed, as
	// written; its reason is the minute's example.
	errs string
}

// Buckets is how many buckets a duration histogram has.
const Buckets = 64

// Bucket returns the histogram bucket of a duration of us microseconds:
// 0 for under 1, then two buckets per doubling, k covering
// [2^((k-1)/2), 2^(k/2)), and the last one every longer duration. Two per
// doubling keep a percentile read off the histogram within 42 % of the
// duration, from a microsecond to half an hour, in 64 counters.
func Bucket(us int64) int {
	if us < 1 {
		return 0
	}
	return min(int(2*math.Log2(float64(us)))+1, Buckets-1)
}

// Percentile returns the duration, in microseconds, below which fraction p
// of a histogram's durations fall: the geometric middle of the bucket the
// percentile falls in. It returns 0 for an empty histogram.
func Percentile(h []int64, p float64) int64 {
	var total int64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := int64(math.Ceil(p * float64(total)))
	var seen int64
	for k, n := range h {
		seen += n
		if seen >= max(want, 1) {
			if k == 0 {
				return 0
			}
			return int64(math.Round(math.Pow(2, (float64(k)-0.5)/2)))
		}
	}
	return int64(math.Round(math.Pow(2, float64(len(h)-1)/2)))
}

// arrayLiteral writes h as a Postgres array literal, {1,2,3}.
func arrayLiteral(h []int64) string {
	b := make([]byte, 0, 2+3*len(h))
	b = append(b, '{')
	for i, n := range h {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, n, 10)
	}
	return string(append(b, '}'))
}

// AddHistograms adds histogram b into a, element by element.
func AddHistograms(a, b []int64) []int64 {
	for len(a) < len(b) {
		a = append(a, 0)
	}
	for i, n := range b {
		a[i] += n
	}
	return a
}

// row is one ingestion_stage_logs row ready to copy.
type row struct {
	messageID                      [16]byte
	dedupeKey                      string
	stage, status                  string
	durationUS                     int64
	attempt                        int16
	instance                       string
	input, output, changeSet, errs string
	at                             time.Time
	code                           string
}

// countKey is one row of ingestion_stage_counts.
type countKey struct {
	minute              time.Time
	stage, status, code string
}

// Batch returns an empty batch that writes with w's mode and instance.
func (w *Writer) Batch() *Batch {
	return &Batch{w: w}
}

// Len returns how many rows the batch holds.
func (b *Batch) Len() int { return len(b.rows) }

// Add adds e: its row when the writer's mode keeps it, its count always.
func (b *Batch) Add(e *Entry) {
	b.add(e.MessageID, e.DedupeKey, b.w.Record(e), e.Repeat)
}

// AddCarried adds rows a message carried, for the message with id and
// dedupeKey. The rows were kept or left out by the mode of the stage that
// made them. A carried row is never a repeat: the stages that carry rows
// write them once, with the message.
func (b *Batch) AddCarried(id uuid.UUID, dedupeKey string, recs ...*telemetryv1.StageRecord) {
	for _, r := range recs {
		b.add(id, dedupeKey, r, false)
	}
}

// add adds the row r makes for the message with id and dedupeKey, and
// counts it; repeat is [Entry.Repeat].
func (b *Batch) add(id uuid.UUID, dedupeKey string, r *telemetryv1.StageRecord, repeat bool) {
	if r == nil {
		return
	}
	status := StatusName(r.GetStatus())
	key := ""
	if status != StatusCompleted {
		// Completed rows are found by message id; the key leads from a
		// message to the failed or duplicate rows of its other
		// deliveries, and costs its bytes only there.
		key = bound.Key(dedupeKey, bound.MaxKeyBytes)
	}
	at := time.UnixMicro(r.GetAtUs()).UTC()
	if r.GetAtUs() == 0 {
		at = time.Now().UTC()
	}
	if r.GetCountOnly() {
		b.count(at, envelope.StageName(r.GetStage()), status, r.GetReasonCode(), max(r.GetDurationUs(), 0), repeat, "")
		return
	}
	instance := r.GetInstance()
	if instance == "" {
		instance = b.w.instance
	}
	rr := row{
		messageID: id, dedupeKey: key, stage: envelope.StageName(r.GetStage()), status: status,
		durationUS: max(r.GetDurationUs(), 0), attempt: int16(min(max(r.GetAttempt(), 1), math.MaxInt16)),
		instance: instance, input: r.GetInput(), output: r.GetOutput(), changeSet: r.GetChangeSet(), errs: r.GetErrors(),
		at: at, code: r.GetReasonCode(),
	}
	b.rows = append(b.rows, rr)
	b.count(at, rr.stage, rr.status, rr.code, rr.durationUS, repeat, rr.errs)
}

// count adds one row to its minute's count: a repeat among the repeats
// too, and the errors of a row that is not completed as the minute's
// latest.
func (b *Batch) count(at time.Time, stage, status, code string, durationUS int64, repeat bool, errs string) {
	if b.counts == nil {
		b.counts = map[countKey]*Count{}
	}
	k := countKey{minute: at.Truncate(time.Minute), stage: stage, status: status, code: code}
	c := b.counts[k]
	if c == nil {
		c = &Count{Durations: make([]int64, Buckets)}
		b.counts[k] = c
	}
	c.Rows++
	if repeat {
		c.Repeats++
	}
	c.Durations[Bucket(durationUS)]++
	if status != StatusCompleted && errs != "" {
		c.errs = errs
	}
}

// Execer runs a statement; a pool or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Querier is a pool or a transaction: the writer writes in a transaction,
// the one given or, given a pool, one of its own.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Write copies the rows and adds their counts. Given a transaction, it
// writes both in that one, so they commit with the stage's other writes;
// given a pool, in a transaction of its own.
func (b *Batch) Write(ctx context.Context, q Querier) error {
	if len(b.counts) == 0 {
		return nil
	}
	if tx, ok := q.(pgx.Tx); ok {
		return b.write(ctx, tx)
	}
	return pgx.BeginFunc(ctx, q, func(tx pgx.Tx) error { return b.write(ctx, tx) })
}

func (b *Batch) write(ctx context.Context, tx pgx.Tx) error {
	if err := b.copyRows(ctx, tx); err != nil {
		return err
	}
	return b.writeCounts(ctx, tx)
}

// copyRows copies the batch's rows into ingestion_stage_logs.
func (b *Batch) copyRows(ctx context.Context, tx pgx.Tx) error {
	if len(b.rows) == 0 {
		return nil
	}
	c := pg.NewCopyRows(pgx.Identifier{"ingestion_stage_logs"}, columns)
	for i := range b.rows {
		r := &b.rows[i]
		c.Row()
		c.UUID(r.messageID)
		c.NullText(r.dedupeKey)
		c.Text(r.stage)
		c.Text(r.status)
		c.Int64(r.durationUS)
		c.Int32(int32(r.attempt))
		c.Text(r.instance)
		c.NullJSONB(r.input)
		c.NullJSONB(r.output)
		c.NullJSONB(r.changeSet)
		c.NullJSONB(r.errs)
		c.Timestamptz(r.at)
		c.NullText(r.code)
	}
	if _, err := c.Send(ctx, tx); err != nil {
		return fmt.Errorf("write %d stage logs: %w", len(b.rows), err)
	}
	return nil
}

// addCounts adds a batch's counts to the rollup, in the slot of the
// writer's backend, so writers on other connections add to other rows and
// do not wait for each other's commit. The rows go in one order in every
// transaction, so two writers that do share a slot wait but never
// deadlock; it is the last statement before commit, so a row is held only
// while the transaction commits.
const addCounts = `insert into ingestion_stage_counts (minute, stage, status, reason_code, slot, rows, durations, repeats, example)
select minute, stage, status, reason_code, (pg_backend_pid() % 16)::smallint, n, h::bigint[], r, x
from unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::text[]) with ordinality
	as u(minute, stage, status, reason_code, n, h, r, x, ord)
order by ord
on conflict (minute, stage, status, reason_code, slot) do update set
	rows = ingestion_stage_counts.rows + excluded.rows,
	durations = telemesh_add_counts(ingestion_stage_counts.durations, excluded.durations),
	repeats = ingestion_stage_counts.repeats + excluded.repeats,
	example = coalesce(excluded.example, ingestion_stage_counts.example)`

func (b *Batch) writeCounts(ctx context.Context, q Execer) error {
	keys := make([]countKey, 0, len(b.counts))
	for k := range b.counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b countKey) int {
		return cmp.Or(a.minute.Compare(b.minute), cmp.Compare(a.stage, b.stage), cmp.Compare(a.status, b.status), cmp.Compare(a.code, b.code))
	})
	minutes, stages, statuses, codes, counts := make([]time.Time, len(keys)), make([]string, len(keys)), make([]string, len(keys)), make([]string, len(keys)), make([]int64, len(keys))
	repeats, examples := make([]int64, len(keys)), make([]*string, len(keys))
	// Each histogram goes as an array literal: a two-dimensional array
	// parameter would come out of unnest an element at a time.
	durations := make([]string, len(keys))
	for i, k := range keys {
		c := b.counts[k]
		minutes[i], stages[i], statuses[i], codes[i], counts[i], durations[i] = k.minute, k.stage, k.status, k.code, c.Rows, arrayLiteral(c.Durations)
		repeats[i] = c.Repeats
		if c.errs != "" {
			x := Example(c.errs)
			examples[i] = &x
		}
	}
	if _, err := q.Exec(ctx, addCounts, minutes, stages, statuses, codes, counts, durations, repeats, examples); err != nil {
		return fmt.Errorf("count %d stage logs: %w", len(b.rows), err)
	}
	return nil
}

// Example returns what status and the viewer show of a row's errors (the
// JSON it was written with) beside the count of its reason code: the
// "reason" member, else the errors as written, cut to
// [pipeline.ReasonWidth] characters.
func Example(errs string) string {
	var m map[string]json.RawMessage
	x := errs
	if json.Unmarshal([]byte(errs), &m) == nil && m["reason"] != nil && string(m["reason"]) != "null" {
		x = string(m["reason"])
		var s string
		if json.Unmarshal(m["reason"], &s) == nil {
			x = s
		}
	}
	x = bound.Clean(x)
	if utf8.RuneCountInString(x) > pipeline.ReasonWidth {
		x = string([]rune(x)[:pipeline.ReasonWidth])
	}
	return x
}

// withoutLongPayload returns the snapshot v with its "payload" member
// replaced by the payload's size when the payload is longer than the
// stored-payload limit: no stage log keeps what the message row does not.
func (w *Writer) withoutLongPayload(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	var n int
	switch p := m["payload"].(type) {
	case string:
		n = len(p)
	case []byte:
		n = len(p)
	case json.RawMessage:
		n = len(p)
	default:
		return v
	}
	if n <= w.limits.PayloadBytes {
		return v
	}
	c := make(map[string]any, len(m))
	for k, x := range m {
		c[k] = x
	}
	c["payload"] = map[string]any{"omitted": true, "bytes": n}
	return c
}

// snapshot encodes v for a jsonb column within the snapshot limit; raw
// JSON is passed through. A NUL character, which a payload or a value may
// carry and jsonb refuses, becomes U+FFFD, and a value JSON cannot encode
// (a NaN, say) is written as the reason, so one message's content can
// never fail the COPY of its whole batch.
func (w *Writer) snapshot(v any) string {
	var raw []byte
	switch t := v.(type) {
	case nil:
		return ""
	case json.RawMessage:
		raw = t
	case []byte:
		raw = t
	}
	var text string
	switch {
	case raw == nil:
		b, err := json.Marshal(v)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"unencodable": err.Error()})
		}
		text = string(b)
	case len(raw) == 0:
		return ""
	case json.Valid(raw):
		text = string(raw)
	default:
		// Raw JSON that is not valid is kept as text, so the column always
		// holds valid jsonb.
		b, _ := json.Marshal(map[string]string{"invalid_json": string(raw)})
		text = string(b)
	}
	if len(text) > w.limits.SnapshotBytes {
		text = truncated(text, w.limits.SnapshotBytes)
	}
	return pg.JSONB(text)
}

// jsonbSpacing is what Postgres adds when it prints a truncation marker.
const jsonbSpacing = 5

// truncated returns {"truncated": true, "bytes": N, "head": "..."} for the
// JSON text s, its head as long as fits within limit bytes once encoded.
func truncated(s string, limit int) string {
	// Room for the marker's own keys and the size.
	head := limit - 64
	for {
		n := max(min(head, len(s)), 0)
		for n > 0 && n < len(s) && !utf8.RuneStart(s[n]) {
			n--
		}
		b, _ := json.Marshal(struct {
			Truncated bool   `json:"truncated"`
			Bytes     int    `json:"bytes"`
			Head      string `json:"head"`
		}{true, len(s), s[:n]})
		// jsonb prints a space after each of the marker's colons and
		// commas: leave room so that its text is within the limit too.
		if len(b)+jsonbSpacing <= limit || n == 0 {
			return string(b)
		}
		// Escapes make the head longer once encoded: shrink it in
		// proportion, and always by something.
		head = min(n*(limit-64)/len(b), n-1)
	}
}
