package roles_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/roles"
	"github.com/telemesh/telemesh/internal/schema"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/services/deriver"
	"github.com/telemesh/telemesh/services/validator"
)

// testOptions returns options with a prefix of this test's own, and drops
// the roles when the test ends (before its database is dropped).
func testOptions(t *testing.T, db *testdb.DB) roles.Options {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	o := roles.Options{Prefix: "tmt" + hex.EncodeToString(b) + "_"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := roles.Drop(ctx, db.Pool, o); err != nil {
			t.Errorf("drop test roles %s*: %v", o.Prefix, err)
		}
	})
	return o
}

// connectAs opens a connection to db as role, which the local server
// trusts without a password.
func connectAs(t *testing.T, db *testdb.DB, role string) *pgx.Conn {
	t.Helper()
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	conn, err := pgx.Connect(t.Context(), u.String())
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// try runs sql in a transaction that is rolled back, and returns its error.
func try(ctx context.Context, conn *pgx.Conn, sql string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	_, err = tx.Exec(ctx, sql)
	return err
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

const (
	insertMessage = `insert into ingestion_messages (id, source_subject, dedupe_key, status, received_at)
		values (gen_random_uuid(), 'devices.x.telemetry', 'k-' || gen_random_uuid(), 'failed_terminal', now())`
	insertTelemetry = `insert into device_telemetry_logs (id, recorded_at, received_at, device_id, topic, ingestion_message_id,
		validation_status, processing_state) values (gen_random_uuid(), now(), now(), gen_random_uuid(), 'telemetry', gen_random_uuid(), 'valid', 'pending')`
	insertStageLog = `insert into ingestion_stage_logs (message_id, stage, status, duration_us, instance)
		values (gen_random_uuid(), 'validate', 'completed', 1, 'test')`
	insertOrganization = `insert into organizations (slug, name) values ('roles-test', 'Roles test')`
	insertOutbox       = `insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at)
		values (gen_random_uuid(), array[gen_random_uuid()], now(), now(), now())`
)

func TestEachRoleHasOnlyTheGrantsItNeeds(t *testing.T) {
	db := testdb.New(t)
	o := testOptions(t, db)
	if _, err := roles.Apply(t.Context(), db.Pool, o); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		role               string
		allowed, forbidden []string
	}{
		{
			role: "gateway",
			allowed: []string{
				`select count(*) from devices`, `select count(*) from pipeline_switches`, insertStageLog,
				insertMessage + ` on conflict (dedupe_key) do nothing`,
				`update ingestion_messages m set status = 'queued', updated_at = now() where m.id in (select id from ingestion_messages where status = 'parked' for update skip locked)`,
				`update ingestion_messages set status = 'parked', updated_at = now() where id = any('{}') and status = 'queued'`,
			},
			forbidden: []string{insertTelemetry, `delete from devices`, `update pipeline_switches set pipeline_enabled = false`,
				`select count(*) from device_telemetry_logs`, `create table gateway_was_here (i int)`},
		},
		{
			role:      "validator",
			allowed:   []string{`select dedupe_key, id::text, status from ingestion_messages where dedupe_key = any('{a}')`, `select count(*) from parameter_definitions`, insertStageLog},
			forbidden: []string{`delete from devices`, insertTelemetry, insertMessage, `update ingestion_messages set status = 'completed'`, `truncate ingestion_stage_logs`},
		},
		{
			role:      "deriver",
			allowed:   []string{`select count(*) from derived_parameter_definitions`, insertStageLog},
			forbidden: []string{`select count(*) from ingestion_messages`, insertMessage, insertTelemetry, `update devices set is_active = false`},
		},
		{
			role: "persister",
			allowed: []string{insertMessage + ` on conflict (dedupe_key) do update set organization_id = excluded.organization_id,
					device_id = excluded.device_id, status = excluded.status, halted_stage = excluded.halted_stage,
					error_summary = excluded.error_summary, delivery_attempts = excluded.delivery_attempts,
					processed_at = excluded.processed_at, trace_id = excluded.trace_id, updated_at = now()
				where ingestion_messages.status in ('parked', 'queued') returning id, dedupe_key`,
				insertTelemetry, insertStageLog,
				`update device_telemetry_logs set processing_state = 'publish_failed', failure_reason = 'x', next_publish_at = now(),
					publish_attempts = publish_attempts + 1, updated_at = now()
				where id = any('{}') and processing_state = 'pending'`,
				insertOutbox,
				// internal/outbox Renew and Delay.
				`update publish_outbox set due_at = now() + interval '3 seconds' where id = any('{}')`,
				`update publish_outbox set due_at = now(), attempts = attempts + 1 where id = any('{}')`},
			forbidden: []string{`delete from device_telemetry_logs`, `delete from ingestion_messages`, `update devices set is_active = false`, insertOrganization,
				`delete from publish_outbox`, `update publish_outbox set message_ids = '{}'`},
		},
		{
			role: "publisher",
			allowed: []string{`select t.id, d.external_id from device_telemetry_logs t left join devices d on d.id = t.device_id
					where t.processing_state in ('pending', 'publish_failed') for update of t skip locked`,
				`update device_telemetry_logs t set processing_state = 'processed', failure_reason = null, next_publish_at = null,
					publish_attempts = t.publish_attempts + 1, processed_at = now(), updated_at = now() where false`, insertStageLog},
			forbidden: []string{insertTelemetry, insertMessage, `update ingestion_messages set status = 'completed'`, `delete from device_telemetry_logs`},
		},
		{
			role: "viewer",
			allowed: []string{`select count(*) from ingestion_messages`, `select count(*) from ingestion_stage_logs`, `select count(*) from device_telemetry_logs`,
				`insert into pipeline_switches (organization_id, pipeline_enabled, updated_by) values (null, false, 'viewer')
					on conflict (organization_id) do update set pipeline_enabled = excluded.pipeline_enabled`,
				insertOutbox},
			forbidden: []string{`delete from ingestion_messages`, `insert into devices (organization_id, device_type_id, external_id) values (gen_random_uuid(), gen_random_uuid(), 'x')`,
				insertTelemetry, insertStageLog, `update devices set is_active = false`,
				`update device_telemetry_logs set next_publish_at = now() where processing_state = 'publish_failed'`},
		},
		{
			role: "operator",
			allowed: []string{insertOrganization, `update devices set is_active = true, updated_at = now() where false`,
				`update ingestion_messages set status = 'parked', updated_at = now() where status = 'queued'`,
				`update ingestion_messages set error_summary = error_summary || ' (replayed)', updated_at = now() where false`,
				insertOutbox},
			forbidden: []string{`create table operator_was_here (i int)`, `drop table devices`, `truncate ingestion_messages`,
				`select telemesh_drop_partitions_before('device_telemetry_logs', current_date + 1)`,
				`select telemesh_ensure_partitions('device_telemetry_logs', current_date + 40, current_date + 40)`, `alter table devices add column x int`},
		},
		{
			role: "migrator",
			allowed: []string{`create table migrator_was_here (i int)`, `alter table devices add column x int`, `drop table ingestion_stage_logs`,
				`select telemesh_ensure_partitions('device_telemetry_logs', current_date + 30, current_date + 31)`,
				`select telemesh_drop_partitions_before('device_telemetry_logs', current_date + 1)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			conn := connectAs(t, db, o.RoleName(tt.role))
			for _, sql := range tt.allowed {
				if err := try(t.Context(), conn, sql); err != nil {
					t.Errorf("%s may not: %s\n%v", tt.role, sql, err)
				}
			}
			for _, sql := range tt.forbidden {
				if err := try(t.Context(), conn, sql); sqlState(err) != "42501" {
					t.Errorf("%s: %s\nerr = %v, want insufficient_privilege (42501)", tt.role, sql, err)
				}
			}
		})
	}

	var notOwned []string
	rows, err := db.Pool.Query(t.Context(), `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = 'public' and c.relkind in ('r', 'p') and c.relowner <> $1::regrole`, o.RoleName("migrator"))
	if err != nil {
		t.Fatal(err)
	}
	if notOwned, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(notOwned) > 0 {
		t.Errorf("tables not owned by the migrator: %v, %v", notOwned, err)
	}
}

func TestApplyIsIdempotentAndConverges(t *testing.T) {
	db := testdb.New(t)
	o := testOptions(t, db)

	dry := o
	dry.DryRun = true
	sum, err := roles.Apply(t.Context(), db.Pool, dry)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Changes) == 0 {
		t.Fatal("a dry run on a fresh database reports no changes")
	}
	var n int
	if err := db.Pool.QueryRow(t.Context(), `select count(*) from pg_roles where rolname like $1`, o.Prefix+"%").Scan(&n); err != nil || n != 0 {
		t.Fatalf("after a dry run %d roles exist (%v)", n, err)
	}

	first, err := roles.Apply(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first.Changes, sum.Changes) {
		t.Errorf("the dry run said\n%s\nthe run did\n%s", strings.Join(sum.Changes, "\n"), strings.Join(first.Changes, "\n"))
	}
	if !slices.Contains(first.Changes, o.RoleName("gateway")+": created, without a password") {
		t.Errorf("first apply:\n%s", strings.Join(first.Changes, "\n"))
	}
	again, err := roles.Apply(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Changes) > 0 {
		t.Errorf("a second apply changed:\n%s", strings.Join(again.Changes, "\n"))
	}

	// Drift is put right: an extra grant, a lost grant, a role attribute,
	// an extra and a lost column, and a whole-row UPDATE where columns are
	// due (what roles applied by an older telemesh hold).
	for _, sql := range []string{
		`grant delete on devices to ` + o.RoleName("validator"),
		`revoke insert on ingestion_stage_logs from ` + o.RoleName("deriver"),
		`alter role ` + o.RoleName("publisher") + ` createdb`,
		`grant update (raw_payload) on ingestion_messages to ` + o.RoleName("gateway"),
		`revoke update (failure_reason) on device_telemetry_logs from ` + o.RoleName("publisher"),
		`grant update on device_telemetry_logs to ` + o.RoleName("viewer"),
	} {
		if _, err := db.Pool.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	fixed, err := roles.Apply(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		o.RoleName("publisher") + ": set NOCREATEDB",
		o.RoleName("validator") + ": revoked DELETE on devices",
		o.RoleName("deriver") + ": granted INSERT on ingestion_stage_logs",
		o.RoleName("gateway") + ": revoked UPDATE (raw_payload) on ingestion_messages",
		o.RoleName("publisher") + ": granted UPDATE (failure_reason) on device_telemetry_logs",
		o.RoleName("viewer") + ": revoked UPDATE on device_telemetry_logs",
	}
	for _, w := range want {
		if !slices.Contains(fixed.Changes, w) {
			t.Errorf("after drift, apply did\n%s\nwant among it: %s", strings.Join(fixed.Changes, "\n"), w)
		}
	}
	if len(fixed.Changes) != len(want) {
		t.Errorf("after drift, apply did more than needed:\n%s", strings.Join(fixed.Changes, "\n"))
	}
}

func TestEveryTableIsGranted(t *testing.T) {
	db := testdb.New(t)
	rows, err := db.Pool.Query(t.Context(), `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition and c.relname <> 'goose_db_version'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(tables)
	spec := roles.Tables()
	slices.Sort(spec)
	if !slices.Equal(tables, spec) {
		t.Fatalf("the migrations create %v, the roles grant %v: add a new table to internal/roles", tables, spec)
	}
	for _, r := range roles.Roles() {
		if !r.Owner && len(r.Grants) == 0 {
			t.Errorf("role %s has no grants", r.Name)
		}
	}
}

func TestApplyNeedsAMigratedSchema(t *testing.T) {
	db := testdb.NewEmpty(t)
	o := testOptions(t, db)
	if _, err := roles.Apply(t.Context(), db.Pool, o); !errors.Is(err, roles.ErrNotMigrated) {
		t.Fatalf("err = %v, want ErrNotMigrated", err)
	}
}

func TestPasswordsAreStoredAsPostgresWouldHashThem(t *testing.T) {
	db := testdb.New(t)
	o := testOptions(t, db)
	o.Passwords = map[string]string{"gateway": "correct horse battery staple"}
	sum, err := roles.Apply(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(sum.Changes, o.RoleName("gateway")+": created, with a password") {
		t.Errorf("changes:\n%s", strings.Join(sum.Changes, "\n"))
	}
	for _, c := range sum.Changes {
		if strings.Contains(c, "horse") {
			t.Fatalf("a change shows the password: %s", c)
		}
	}

	// Postgres's own verifier for the same password and salt.
	var ours string
	if err := db.Pool.QueryRow(t.Context(), `select rolpassword from pg_authid where rolname = $1`, o.RoleName("gateway")).Scan(&ours); err != nil {
		t.Fatal(err)
	}
	iterations, salt := parseVerifier(t, ours)
	ref := o.Prefix + "ref"
	t.Cleanup(func() { _, _ = db.Pool.Exec(context.Background(), `drop role if exists `+ref) })
	tx, err := db.Pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var theirs string
	for _, sql := range []string{
		`set local password_encryption = 'scram-sha-256'`,
		`create role ` + ref + ` password 'correct horse battery staple'`,
	} {
		if _, err := tx.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.QueryRow(t.Context(), `select rolpassword from pg_authid where rolname = $1`, ref).Scan(&theirs); err != nil {
		t.Fatal(err)
	}
	// Postgres picks its own salt; recompute ours with it.
	_, theirSalt := parseVerifier(t, theirs)
	got := roles.ScramVerifierForTest(t, "correct horse battery staple", theirSalt, iterations)
	if got != theirs {
		t.Fatalf("verifier\n%s\nPostgres made\n%s", got, theirs)
	}
	if again := roles.ScramVerifierForTest(t, "correct horse battery staple", salt, iterations); again != ours {
		t.Fatalf("stored verifier %s is not the password's (%s)", ours, again)
	}

	// Applying again without the password keeps it.
	o.Passwords = nil
	if _, err := roles.Apply(t.Context(), db.Pool, o); err != nil {
		t.Fatal(err)
	}
	var kept string
	if err := db.Pool.QueryRow(t.Context(), `select rolpassword from pg_authid where rolname = $1`, o.RoleName("gateway")).Scan(&kept); err != nil || kept != ours {
		t.Fatalf("password after an apply without one: %q, %v", kept, err)
	}
}

// parseVerifier returns the iterations and salt of a SCRAM-SHA-256
// verifier.
func parseVerifier(t *testing.T, v string) (int, []byte) {
	t.Helper()
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	if !ok {
		t.Fatalf("not a SCRAM verifier: %q", v)
	}
	head, _, _ := strings.Cut(rest, "$")
	iter, salt64, _ := strings.Cut(head, ":")
	n, err := strconv.Atoi(iter)
	if err != nil {
		t.Fatal(err)
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil {
		t.Fatal(err)
	}
	return n, salt
}

func TestOptionsCheck(t *testing.T) {
	tests := []struct {
		name string
		o    roles.Options
		want error
	}{
		{"defaults", roles.Options{}, nil},
		{"a prefix", roles.Options{Prefix: "acme_tm_"}, nil},
		{"upper-case prefix", roles.Options{Prefix: "Telemesh_"}, roles.ErrBadPrefix},
		{"prefix with a quote", roles.Options{Prefix: `x"; drop role postgres; --`}, roles.ErrBadPrefix},
		{"prefix too long", roles.Options{Prefix: strings.Repeat("a", 55)}, roles.ErrBadPrefix},
		{"password", roles.Options{Passwords: map[string]string{"persister": "it's fine"}}, nil},
		{"non-ASCII password", roles.Options{Passwords: map[string]string{"persister": "pässword"}}, roles.ErrBadPassword},
		{"password of no such role", roles.Options{Passwords: map[string]string{"admin": "x"}}, roles.ErrUnknownRole},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.o.Check(); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("Check() = %v, want %v", err, tt.want)
			}
		})
	}
}

// Forbidden writes, built so that only the missing privilege can refuse
// them: no column is read and no row is touched, so a role that held the
// privilege would get no error at all.
func insertInto(table string) string { return `insert into ` + table + ` default values` }
func deleteFrom(table string) string { return `delete from ` + table + ` where false` }
func updateSet(table, column string) string {
	return `update ` + table + ` set ` + column + ` = null where false`
}

// TestEveryRoleIsRefusedWritesItDoesNotNeed tries, for every role and
// every table, writes the role has no use for (an insert, an update of a
// column its queries never set, a delete) and expects each refused with
// insufficient_privilege.
func TestEveryRoleIsRefusedWritesItDoesNotNeed(t *testing.T) {
	db := testdb.New(t)
	o := testOptions(t, db)
	if _, err := roles.Apply(t.Context(), db.Pool, o); err != nil {
		t.Fatal(err)
	}
	catalog := []string{"organizations", "device_types", "device_type_topics", "devices",
		"parameter_definitions", "derived_parameter_definitions", "pipeline_switches"}
	// noWrites are the writes of a role that only reads a table.
	noWrites := func(table, column string) []string {
		return []string{insertInto(table), updateSet(table, column), deleteFrom(table)}
	}
	// readOnlyCatalog is every write to the catalog, which the stages only read.
	readOnlyCatalog := func() []string {
		var w []string
		for _, table := range catalog {
			w = append(w, noWrites(table, "updated_at")...)
		}
		return w
	}
	// stageLogs: a stage appends its rows and never changes them; it adds
	// to their counts and never takes from them.
	stageLogs := []string{updateSet("ingestion_stage_logs", "status"), deleteFrom("ingestion_stage_logs"),
		updateSet("ingestion_stage_counts", "stage"), deleteFrom("ingestion_stage_counts"),
		insertInto("telemesh_partition_storage"), updateSet("telemesh_partition_storage", "fillfactor")}
	// noOutbox: a stage other than the persister and the publisher leaves
	// the publish outbox alone.
	noOutbox := noWrites("publish_outbox", "due_at")
	tests := map[string][]string{
		"gateway": append(readOnlyCatalog(), append(append(stageLogs, noOutbox...),
			// It inserts dead letters and parks and resumes messages:
			// status alone changes, never what a message carried.
			updateSet("ingestion_messages", "raw_payload"), updateSet("ingestion_messages", "dedupe_key"),
			updateSet("ingestion_messages", "error_summary"), deleteFrom("ingestion_messages"),
			insertInto("device_telemetry_logs"), updateSet("device_telemetry_logs", "processing_state"), deleteFrom("device_telemetry_logs"))...),
		"validator": append(readOnlyCatalog(), append(append(stageLogs, noOutbox...),
			insertInto("ingestion_messages"), updateSet("ingestion_messages", "status"), deleteFrom("ingestion_messages"),
			insertInto("device_telemetry_logs"), updateSet("device_telemetry_logs", "processing_state"), deleteFrom("device_telemetry_logs"))...),
		"deriver": append(readOnlyCatalog(), append(append(stageLogs, noOutbox...),
			insertInto("ingestion_messages"), updateSet("ingestion_messages", "status"), deleteFrom("ingestion_messages"),
			insertInto("device_telemetry_logs"), updateSet("device_telemetry_logs", "transformed_values"), deleteFrom("device_telemetry_logs"))...),
		"persister": append(readOnlyCatalog(), append(append(stageLogs,
			// It adds outbox entries and makes them due later, never
			// removing one or changing what it holds.
			deleteFrom("publish_outbox"), updateSet("publish_outbox", "message_ids")),
			// It completes a parked message's row, never rewriting what
			// was received; of a telemetry row it changes the publish state.
			updateSet("ingestion_messages", "raw_payload"), updateSet("ingestion_messages", "dedupe_key"),
			updateSet("ingestion_messages", "received_at"), deleteFrom("ingestion_messages"),
			updateSet("device_telemetry_logs", "transformed_values"), updateSet("device_telemetry_logs", "raw_payload"),
			updateSet("device_telemetry_logs", "processed_at"), deleteFrom("device_telemetry_logs"))...),
		"publisher": append(readOnlyCatalog(), append(append(stageLogs,
			// It settles outbox entries; what an entry holds never changes.
			updateSet("publish_outbox", "message_ids")),
			insertInto("ingestion_messages"), updateSet("ingestion_messages", "status"), deleteFrom("ingestion_messages"),
			insertInto("device_telemetry_logs"), updateSet("device_telemetry_logs", "transformed_values"),
			updateSet("device_telemetry_logs", "raw_payload"), updateSet("device_telemetry_logs", "device_id"), deleteFrom("device_telemetry_logs"))...),
		"viewer": {
			insertInto("organizations"), updateSet("organizations", "name"), deleteFrom("organizations"),
			insertInto("device_types"), updateSet("device_types", "base_topic"), deleteFrom("device_types"),
			insertInto("device_type_topics"), updateSet("device_type_topics", "suffix"), deleteFrom("device_type_topics"),
			insertInto("devices"), updateSet("devices", "is_active"), deleteFrom("devices"),
			insertInto("parameter_definitions"), updateSet("parameter_definitions", "json_path"), deleteFrom("parameter_definitions"),
			insertInto("derived_parameter_definitions"), updateSet("derived_parameter_definitions", "expression"), deleteFrom("derived_parameter_definitions"),
			// It flips switches, nothing else of the row.
			updateSet("pipeline_switches", "organization_id"), deleteFrom("pipeline_switches"),
			// It reads messages and only makes publish_failed rows due.
			insertInto("ingestion_messages"), updateSet("ingestion_messages", "raw_payload"), updateSet("ingestion_messages", "status"),
			deleteFrom("ingestion_messages"),
			insertInto("device_telemetry_logs"), updateSet("device_telemetry_logs", "transformed_values"),
			updateSet("device_telemetry_logs", "raw_payload"), updateSet("device_telemetry_logs", "processing_state"), deleteFrom("device_telemetry_logs"),
			insertInto("ingestion_stage_logs"), updateSet("ingestion_stage_logs", "status"), deleteFrom("ingestion_stage_logs"),
			insertInto("ingestion_stage_counts"), updateSet("ingestion_stage_counts", "rows"), deleteFrom("ingestion_stage_counts"),
			// A retry adds an outbox entry and changes none.
			updateSet("publish_outbox", "due_at"), deleteFrom("publish_outbox"),
			insertInto("telemesh_partition_storage"), updateSet("telemesh_partition_storage", "fillfactor"), deleteFrom("telemesh_partition_storage"),
		},
		"operator": {
			// It curates the catalog and flips switches, and deletes
			// nothing: devices are retired with deleted_at.
			deleteFrom("organizations"), deleteFrom("device_types"), deleteFrom("device_type_topics"), deleteFrom("devices"),
			deleteFrom("parameter_definitions"), deleteFrom("derived_parameter_definitions"),
			updateSet("pipeline_switches", "organization_id"), deleteFrom("pipeline_switches"),
			// Replays change a message's status and note, and a row's
			// next publish; what happened stays as it was recorded.
			insertInto("ingestion_messages"), updateSet("ingestion_messages", "raw_payload"), deleteFrom("ingestion_messages"),
			insertInto("device_telemetry_logs"), updateSet("device_telemetry_logs", "transformed_values"),
			updateSet("device_telemetry_logs", "processing_state"), deleteFrom("device_telemetry_logs"),
			insertInto("ingestion_stage_logs"), updateSet("ingestion_stage_logs", "status"), deleteFrom("ingestion_stage_logs"),
			insertInto("ingestion_stage_counts"), updateSet("ingestion_stage_counts", "rows"), deleteFrom("ingestion_stage_counts"),
			updateSet("publish_outbox", "due_at"), deleteFrom("publish_outbox"),
			insertInto("telemesh_partition_storage"), updateSet("telemesh_partition_storage", "fillfactor"), deleteFrom("telemesh_partition_storage"),
		},
	}
	for _, r := range roles.Roles() {
		if r.Owner {
			continue
		}
		forbidden, ok := tests[r.Name]
		if !ok {
			t.Errorf("no forbidden writes listed for role %s", r.Name)
			continue
		}
		// Every table has at least one write the role is refused.
		for _, table := range roles.Tables() {
			if !slices.ContainsFunc(forbidden, func(sql string) bool { return strings.Contains(sql, " "+table+" ") }) {
				t.Errorf("role %s: no forbidden write on %s listed", r.Name, table)
			}
		}
		t.Run(r.Name, func(t *testing.T) {
			conn := connectAs(t, db, o.RoleName(r.Name))
			for _, sql := range forbidden {
				if err := try(t.Context(), conn, sql); sqlState(err) != "42501" {
					t.Errorf("%s: %s\nerr = %v, want insufficient_privilege (42501)", r.Name, sql, err)
				}
			}
		})
	}
}

// rolePool opens a pool on db as role, closed when the test ends.
func rolePool(t *testing.T, db *testdb.DB, role string) *pgxpool.Pool {
	t.Helper()
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	pool, err := pg.Open(t.Context(), u.String(), pg.Options{ApplicationName: "roles-test", MaxConns: 2})
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestViewerAndOperatorDoTheirWork runs what the viewer and the operator
// commands really run, through the same functions, connected as their
// roles: every write they need is granted. (The stages' work runs under
// their roles in internal/app's TestMeshWithMTLSAndStageRoles.)
func TestViewerAndOperatorDoTheirWork(t *testing.T) {
	db := testdb.New(t)
	o := testOptions(t, db)
	if _, err := roles.Apply(t.Context(), db.Pool, o); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := demo.Seed(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	// What replays find: a publish_failed row, a message left queued by a
	// crashed gateway, and a dead letter.
	var failedRow, deadLetter uuid.UUID
	err := db.Pool.QueryRow(ctx, `insert into device_telemetry_logs (recorded_at, received_at, device_id, topic, ingestion_message_id,
			validation_status, processing_state, failure_reason, next_publish_at)
		select now(), now(), d.id, 'telemetry', gen_random_uuid(), 'valid', 'publish_failed', 'nats down', now() + interval '1 hour'
		from devices d where d.external_id = 'thermo-01' returning id`).Scan(&failedRow)
	if err != nil {
		t.Fatal(err)
	}
	// The publisher keeps a failed row in the publish outbox, due later.
	if _, err := db.Pool.Exec(ctx, `insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at, attempts)
		select gen_random_uuid(), array[id], recorded_at, recorded_at, now() + interval '1 hour', 1
		from device_telemetry_logs where id = $1`, failedRow); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`insert into ingestion_messages (organization_id, source_subject, dedupe_key, status, received_at, updated_at)
			select id, 'devices.thermo-01.telemetry', 'roles-queued', 'queued', now() - interval '1 hour', now() - interval '1 hour'
			from organizations where slug = 'acme'`,
	} {
		if _, err := db.Pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	err = db.Pool.QueryRow(ctx, `insert into ingestion_messages (source_subject, dedupe_key, raw_payload, status, halted_stage,
			error_summary, received_at)
		values ('devices.thermo-01.telemetry', 'roles-dead', '{"temp_c": 1}', 'failed_terminal', 'ingress',
			'dead-lettered after 10 deliveries: unavailable', now()) returning id`).Scan(&deadLetter)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("viewer", func(t *testing.T) {
		pool := rolePool(t, db, o.RoleName("viewer"))
		for _, org := range []string{"", "acme"} {
			if err := ops.SetSwitch(ctx, pool, org, "publish_analytics", false, "viewer"); err != nil {
				t.Errorf("set a switch (organization %q): %v", org, err)
			}
			if err := ops.SetSwitch(ctx, pool, org, "publish_analytics", true, "viewer"); err != nil {
				t.Errorf("set a switch back (organization %q): %v", org, err)
			}
		}
		if _, err := ops.GetSwitches(ctx, pool, ""); err != nil {
			t.Errorf("read the switches: %v", err)
		}
		if n, err := ops.ReplayPublishFailed(ctx, pool, ops.Filter{}); err != nil || n != 1 {
			t.Errorf("retry every publish_failed row: %d, %v; want 1", n, err)
		}
		if n, err := ops.ReplayPublishFailedRows(ctx, pool, []uuid.UUID{failedRow}); err != nil || n != 1 {
			t.Errorf("retry one row: %d, %v; want 1", n, err)
		}
		if _, err := ops.TraceMessage(ctx, pool, deadLetter.String()); err != nil {
			t.Errorf("trace a message: %v", err)
		}
	})

	t.Run("operator", func(t *testing.T) {
		pool := rolePool(t, db, o.RoleName("operator"))
		f, err := schema.Parse([]byte(`
organization: roles-test
device_types:
  - name: probe
    topics:
      - suffix: telemetry
        parameters:
          - {key: temp_c, json_path: $.temp_c, type: decimal, required: true}
        derived:
          - {key: temp_f, type: decimal, expression: {"+": [{"*": [{var: temp_c}, 1.8]}, 32]}}
`))
		if err != nil {
			t.Fatal(err)
		}
		// Twice: the second run updates every row the first inserted.
		for range 2 {
			checks := schema.Checks{Parameter: validator.ValidateDefinition, Topic: deriver.CheckDefinitions}
			if _, err := schema.Apply(ctx, pool, f, checks); err != nil {
				t.Fatalf("schema apply: %v", err)
			}
		}
		// What `telemesh devices add` and `deactivate` run.
		if _, err := pool.Exec(ctx, `insert into devices (organization_id, device_type_id, external_id, name, is_active)
			select o.id, t.id, $3, $3, true from organizations o join device_types t on t.organization_id = o.id
			where o.slug = $1 and t.name = $2`, "roles-test", "probe", "probe-01"); err != nil {
			t.Errorf("add a device: %v", err)
		}
		if _, err := pool.Exec(ctx, `update devices set is_active = $2, updated_at = now()
			where deleted_at is null and (external_id = $1 or id::text = $1)`, "probe-01", false); err != nil {
			t.Errorf("deactivate a device: %v", err)
		}
		if err := ops.SetSwitch(ctx, pool, "acme", "pipeline.enabled", true, "operator"); err != nil {
			t.Errorf("set a switch: %v", err)
		}
		if n, err := ops.ReplayPublishFailed(ctx, pool, ops.Filter{Device: "thermo-01"}); err != nil || n != 1 {
			t.Errorf("replay publish-failed: %d, %v; want 1", n, err)
		}
		if n, err := ops.Repark(ctx, pool, ops.Filter{Organization: "acme"}); err != nil || n != 1 {
			t.Errorf("replay parked (re-park a stale queued message): %d, %v; want 1", n, err)
		}
		dls, err := ops.DeadLetters(ctx, pool, ops.Filter{})
		if err != nil || len(dls) != 1 {
			t.Fatalf("dead letters: %v, %v; want 1", dls, err)
		}
		_, js := testnats.New(t).Connect(t)
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TELEMETRY", Subjects: demo.Subjects}); err != nil {
			t.Fatal(err)
		}
		if err := ops.ReplayDeadLetter(ctx, pool, js, dls[0]); err != nil {
			t.Errorf("replay a dead letter: %v", err)
		}
		if _, err := ops.TraceMessage(ctx, pool, deadLetter.String()); err != nil {
			t.Errorf("trace a message: %v", err)
		}
	})
}

func TestInspect(t *testing.T) {
	db := testdb.New(t)
	o := testOptions(t, db)
	states, err := roles.Inspect(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != len(roles.Roles()) {
		t.Fatalf("%d states for %d roles", len(states), len(roles.Roles()))
	}
	for _, s := range states {
		if s.Exists {
			t.Errorf("%s exists before apply", s.Name)
		}
	}
	if _, err := roles.Apply(t.Context(), db.Pool, o); err != nil {
		t.Fatal(err)
	}
	states, err = roles.Inspect(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range states {
		if !s.Exists || len(s.Differences) > 0 {
			t.Errorf("%s after apply: exists %v, differences %q", s.Name, s.Exists, s.Differences)
		}
	}

	for _, sql := range []string{
		`grant delete on devices to ` + o.RoleName("validator"),
		`grant update on ingestion_messages to ` + o.RoleName("viewer"),
		`revoke update (failure_reason) on device_telemetry_logs from ` + o.RoleName("publisher"),
		`alter role ` + o.RoleName("deriver") + ` createrole`,
		`create table migrator_does_not_own (i int)`,
	} {
		if _, err := db.Pool.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	states, err = roles.Inspect(t.Context(), db.Pool, o)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"validator": {"also DELETE on devices"},
		"viewer":    {"also UPDATE on ingestion_messages"},
		"publisher": {"lacks UPDATE (failure_reason) on device_telemetry_logs"},
		"deriver":   {"needs NOCREATEROLE"},
		"migrator":  {"does not own 1 object of schema public"},
	}
	for _, s := range states {
		if !slices.Equal(s.Differences, want[s.Role.Name]) {
			t.Errorf("%s after drift: %q, want %q", s.Name, s.Differences, want[s.Role.Name])
		}
	}

	// Read-only: the viewer may inspect too.
	if _, err := roles.Inspect(t.Context(), connectAs(t, db, o.RoleName("viewer")), o); err != nil {
		t.Errorf("inspect as the viewer: %v", err)
	}
	if _, err := roles.Inspect(t.Context(), testdb.NewEmpty(t).Pool, o); !errors.Is(err, roles.ErrNotMigrated) {
		t.Errorf("inspect an unmigrated database: %v, want ErrNotMigrated", err)
	}
}
