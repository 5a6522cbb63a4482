package faults_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/migrate"
)

// pgPair is a primary and a synchronous standby on loopback: the standby
// made with pg_basebackup and streaming from the primary, which commits
// only once the standby has flushed the commit (synchronous_standby_names,
// synchronous_commit on), as an operator such as CloudNativePG runs them
// with synchronous replication. telemesh reaches them through one
// multi-host URL with target_session_attrs=read-write, so after a
// failover its connections find the new primary on their own.
type pgPair struct {
	root    string
	nodes   [2]*privatePostgres
	primary int
}

// startPostgresPair starts the primary and the standby, turns synchronous
// replication on, and migrates and seeds the database through the
// multi-host URL. Both are stopped and removed when the test ends.
func startPostgresPair(t testing.TB) (*pgPair, *database) {
	t.Helper()
	root := postgresRoot(t)
	if findPostgresBinary("pg_basebackup") == "" {
		t.Fatalf("the Postgres failover fault needs pg_basebackup (in PATH or /usr/lib/postgresql/*/bin); " +
			"install the server binaries (Debian/Ubuntu: apt-get install postgresql)")
	}
	pp := &pgPair{root: root, nodes: [2]*privatePostgres{newPrivatePostgres(t, root, "pg_a"), newPrivatePostgres(t, root, "pg_b")}}
	primary := pp.nodes[0]
	primary.initdb(t)
	primary.start(t)
	pp.addStandby(t, pp.nodes[1])

	url := pp.url()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := migrate.Up(ctx, url, nil); err != nil {
		t.Fatalf("migrate the primary through %s: %v", url, err)
	}
	return pp, openDatabase(t, url)
}

// url connects to whichever of the two accepts writes.
func (pp *pgPair) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=5",
		pp.nodes[0].port, pp.nodes[1].port)
}

// Primary is the server that accepts writes; standby the other.
func (pp *pgPair) Primary() *privatePostgres { return pp.nodes[pp.primary] }

func (pp *pgPair) standby() *privatePostgres { return pp.nodes[1-pp.primary] }

// addStandby makes sb a streaming copy of the primary (pg_basebackup -R,
// into an empty directory), starts it, and makes the primary wait for it
// on every commit.
func (pp *pgPair) addStandby(t testing.TB, sb *privatePostgres) {
	t.Helper()
	primary := pp.Primary()
	if err := os.RemoveAll(sb.dir); err != nil {
		t.Fatal(err)
	}
	out, err := runAsPostgres(t.Context(), findPostgresBinary("pg_basebackup"), "-D", sb.dir,
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", "postgres",
		"-X", "stream", "-c", "fast", "-R", "--no-sync").CombinedOutput()
	if err != nil {
		t.Fatalf("pg_basebackup from %s: %v\n%s", primary.name, err, out)
	}
	sb.start(t)
	// The standby names itself by its cluster_name. The setting lives in
	// the primary's postgresql.auto.conf, which the next base backup
	// copies: a promoted standby starts with it cleared (promote).
	pp.exec(t, primary, fmt.Sprintf(`alter system set synchronous_standby_names = '%s'`, sb.name))
	pp.exec(t, primary, `select pg_reload_conf()`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		var state string
		err := pp.queryRow(t, primary, `select coalesce((select sync_state from pg_stat_replication where application_name = $1), '')`, sb.name).Scan(&state)
		if err == nil && state == "sync" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby %s not a synchronous standby of %s within 60s (state %q, err %v)", sb.name, primary.name, state, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failover kills the primary with SIGKILL, every process of it at once as
// a lost machine would, and promotes the standby. It returns the moment of
// the promotion. The killed server stays down.
func (pp *pgPair) failover(t testing.TB) time.Time {
	t.Helper()
	old := pp.Primary()
	old.crash(t)
	sb := pp.standby()
	moment := time.Now()
	sb.ctl(t, "promote", "-w", "-t", "60")
	pp.primary = 1 - pp.primary
	// Its configuration came from the old primary, which waited for it; as
	// the primary it has no standby to wait for until one is added.
	pp.exec(t, sb, `alter system reset synchronous_standby_names`)
	pp.exec(t, sb, `select pg_reload_conf()`)
	return moment
}

// rebuildStandby makes the server a failover left down a standby of the
// new primary, from a fresh base backup, so the pair can fail over again.
func (pp *pgPair) rebuildStandby(t testing.TB) {
	t.Helper()
	pp.addStandby(t, pp.standby())
}

// crash sends SIGKILL to the postmaster's process group (pg_ctl starts the
// postmaster in a session of its own, so the group is the server and its
// backends), waits until it is gone and removes its pid file, so nothing
// later signals a pid that may have been reused.
func (pg *privatePostgres) crash(t testing.TB) {
	t.Helper()
	pidFile := filepath.Join(pg.dir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("%s: read its pid: %v", pg.name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		t.Fatalf("%s: no pid in %s", pg.name, pidFile)
	}
	target := pid
	if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
		target = -pid
	}
	if err := syscall.Kill(target, syscall.SIGKILL); err != nil {
		t.Fatalf("%s: kill %d: %v", pg.name, target, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for processAlive(pid) || portOpen(pg.port) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still running 30s after SIGKILL", pg.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// processAlive reports whether pid runs; a zombie (killed, not yet reaped
// by its parent) does not.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// portOpen reports whether something accepts connections on the port.
func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// exec runs one statement on pg itself (not through the pair's URL).
func (pp *pgPair) exec(t testing.TB, pg *privatePostgres, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.url())
	if err != nil {
		t.Fatalf("%s: connect: %v", pg.name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %s: %v", pg.name, sql, err)
	}
}

// queryRow runs one query on pg itself; the connection closes with the row.
func (pp *pgPair) queryRow(t testing.TB, pg *privatePostgres, sql string, args ...any) pgx.Row {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	conn, err := pgx.Connect(ctx, pg.url())
	if err != nil {
		cancel()
		return errRow{err}
	}
	return closingRow{conn.QueryRow(ctx, sql, args...), func() { _ = conn.Close(context.Background()); cancel() }}
}

// errRow is a row that failed before the query ran.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// closingRow closes its connection once scanned.
type closingRow struct {
	pgx.Row
	close func()
}

func (r closingRow) Scan(dest ...any) error {
	defer r.close()
	return r.Row.Scan(dest...)
}

// holdsOnNewPrimary checks, on the server that is now the primary, that
// every id has its message row completed: what was acknowledged before the
// failover is on the new primary.
func (pp *pgPair) holdsOnNewPrimary(t testing.TB, ids []string) string {
	t.Helper()
	var completed int
	if err := pp.queryRow(t, pp.Primary(), `select count(distinct source_message_id) from ingestion_messages
		where status = 'completed' and source_message_id = any($1)`, ids).Scan(&completed); err != nil {
		t.Fatalf("count messages on the new primary %s: %v", pp.Primary().name, err)
	}
	if completed != len(ids) {
		t.Errorf("the new primary %s holds %d of the %d messages acknowledged before the failover", pp.Primary().name, completed, len(ids))
	}
	return fmt.Sprintf("the new primary %s holds all %d messages completed before the failover", pp.Primary().name, completed)
}
