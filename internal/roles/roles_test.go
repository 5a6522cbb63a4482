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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/telemesh/telemesh/internal/roles"
	"github.com/telemesh/telemesh/internal/testdb"
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
				`update ingestion_messages m set status = 'queued' where m.id in (select id from ingestion_messages where status = 'parked' for update skip locked)`,
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
			allowed: []string{insertMessage + ` on conflict (dedupe_key) do update set status = excluded.status where ingestion_messages.status in ('parked', 'queued') returning id`,
				insertTelemetry, insertStageLog,
				`update device_telemetry_logs set processing_state = 'publish_failed' where id = any('{}') and processing_state = 'pending'`},
			forbidden: []string{`delete from device_telemetry_logs`, `delete from ingestion_messages`, `update devices set is_active = false`, insertOrganization},
		},
		{
			role: "publisher",
			allowed: []string{`select t.id, d.external_id from device_telemetry_logs t left join devices d on d.id = t.device_id
					where t.processing_state in ('pending', 'publish_failed') for update of t skip locked`,
				`update device_telemetry_logs set processing_state = 'processed' where false`, insertStageLog},
			forbidden: []string{insertTelemetry, insertMessage, `update ingestion_messages set status = 'completed'`, `delete from device_telemetry_logs`},
		},
		{
			role: "viewer",
			allowed: []string{`select count(*) from ingestion_messages`, `select count(*) from ingestion_stage_logs`, `select count(*) from device_telemetry_logs`,
				`insert into pipeline_switches (organization_id, pipeline_enabled, updated_by) values (null, false, 'viewer')
					on conflict (organization_id) do update set pipeline_enabled = excluded.pipeline_enabled`,
				`update device_telemetry_logs set next_publish_at = now() where processing_state = 'publish_failed'`,
				`update ingestion_messages set status = 'parked' where status = 'queued'`},
			forbidden: []string{`delete from ingestion_messages`, `insert into devices (organization_id, device_type_id, external_id) values (gen_random_uuid(), gen_random_uuid(), 'x')`,
				insertTelemetry, insertStageLog, `update devices set is_active = false`},
		},
		{
			role:    "operator",
			allowed: []string{insertOrganization, `delete from devices where false`, `update devices set is_active = true where false`, `delete from ingestion_messages where false`},
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

	// Drift is put right: an extra grant, a lost grant, a role attribute.
	for _, sql := range []string{
		`grant delete on devices to ` + o.RoleName("validator"),
		`revoke insert on ingestion_stage_logs from ` + o.RoleName("deriver"),
		`alter role ` + o.RoleName("publisher") + ` createdb`,
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
