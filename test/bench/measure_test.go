package bench_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat: 100
// on every Linux the harness runs on.
const clockTicks = 100

// errNoProcess is returned when /proc has no such process: it has exited,
// or it runs on another machine or in another PID namespace.
var errNoProcess = errors.New("no such process in /proc")

// cpuOf returns the user and system CPU the process has used so far,
// its exited threads included.
func cpuOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("pid %d: %w", pid, errNoProcess)
	}
	if err != nil {
		return 0, err
	}
	_, cpu, err := parseStat(b)
	return cpu, err
}

// parseStat reads the command name and the CPU time of a /proc/<pid>/stat
// line.
func parseStat(b []byte) (string, time.Duration, error) {
	// The command name is in parentheses and may itself hold spaces and
	// parentheses: the fields start after the last ')'.
	open, i := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || i < open {
		return "", 0, fmt.Errorf("unexpected /proc stat line %q", b)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 13 {
		return "", 0, fmt.Errorf("unexpected /proc stat line %q", b)
	}
	// utime and stime are fields 14 and 15 of the line, 12 and 13 after
	// the name.
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return "", 0, fmt.Errorf("unexpected /proc stat line %q: %w", b, err)
	}
	return string(b[open+1 : i]), time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// peakRSS returns the process's peak resident set size so far (VmHWM), in
// bytes.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("pid %d: %w", pid, errNoProcess)
	}
	if err != nil {
		return 0, err
	}
	return parseHWM(b)
}

// parseHWM reads VmHWM from a /proc/<pid>/status file.
func parseHWM(b []byte) (int64, error) {
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			break
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmHWM in /proc status %q", b)
}

// cpuWindow measures the CPU a set of processes uses between start and
// stop.
type cpuWindow struct {
	pids  map[string]int
	start map[string]time.Duration
}

// startCPU starts measuring the named processes.
func startCPU(tb testing.TB, pids map[string]int) *cpuWindow {
	tb.Helper()
	w := &cpuWindow{pids: pids, start: map[string]time.Duration{}}
	for name, pid := range pids {
		c, err := cpuOf(pid)
		if err != nil {
			tb.Fatalf("CPU of %s: %v", name, err)
		}
		w.start[name] = c
	}
	return w
}

// used returns the CPU each process has used since startCPU.
func (w *cpuWindow) used(tb testing.TB) map[string]time.Duration {
	tb.Helper()
	out := map[string]time.Duration{}
	for name, pid := range w.pids {
		c, err := cpuOf(pid)
		if err != nil {
			tb.Fatalf("CPU of %s: %v (did it exit during the run?)", name, err)
		}
		out[name] = c - w.start[name]
	}
	return out
}

// pgCPU measures the CPU of the Postgres processes that work for one
// database: its client backends (but for the harness's own connection, whose
// polling is not the pipeline's cost), its autovacuum and parallel workers,
// and the server's shared background processes (WAL writer, checkpointer,
// background writer), which also work for every other database on the
// server. A backend that starts during the window counts in full; one that
// ends counts up to the last sample that saw it, so sample often.
type pgCPU struct {
	conn  *pgx.Conn
	first map[int]time.Duration
	last  map[int]time.Duration
	// local is false when the server's processes are not in this machine's
	// /proc (a remote server): the figure is then unavailable.
	local bool
}

// newPGCPU opens the connection that samples the server's processes, on
// the database whose work is measured, and starts the window.
func newPGCPU(tb testing.TB, url string) *pgCPU {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatalf("connect to Postgres to measure it: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close(context.Background()) })
	// Parallel workers of the harness's own counts would be counted as the
	// pipeline's.
	if _, err := conn.Exec(ctx, `set max_parallel_workers_per_gather = 0`); err != nil {
		tb.Fatalf("set up the harness's connection: %v", err)
	}
	p := &pgCPU{conn: conn}
	p.restart(tb)
	return p
}

// restart begins a new window at the processes' present CPU.
func (p *pgCPU) restart(tb testing.TB) {
	tb.Helper()
	p.first, p.last, p.local = map[int]time.Duration{}, map[int]time.Duration{}, true
	if err := p.sample(); err != nil {
		tb.Fatalf("Postgres CPU: %v", err)
	}
	for pid, c := range p.last {
		p.first[pid] = c
	}
}

// sample reads the CPU of every process that works for the database now.
func (p *pgCPU) sample() error {
	if !p.local {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := p.conn.Query(ctx, `select pid from pg_stat_activity
		where pid <> pg_backend_pid()
		and (datname = current_database() or (datname is null and backend_type <> 'client backend'))`)
	if err != nil {
		return fmt.Errorf("list the server's processes: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("list the server's processes: %w", err)
	}
	seen := 0
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // ended since, or not on this machine
		}
		name, c, err := parseStat(b)
		if err != nil || !strings.HasPrefix(name, "postgres") {
			continue
		}
		seen++
		p.last[int(pid)] = c
	}
	if seen == 0 && len(pids) > 0 {
		p.local = false
	}
	return nil
}

// used returns the CPU used since the window started, sampling once more;
// ok is false when the server is not on this machine.
func (p *pgCPU) used(tb testing.TB) (cpu time.Duration, ok bool) {
	tb.Helper()
	if err := p.sample(); err != nil {
		tb.Fatalf("Postgres CPU: %v", err)
	}
	for pid, c := range p.last {
		cpu += c - p.first[pid]
	}
	return cpu, p.local
}

// walMark is where the server's WAL stood: its position, the full-page
// images written so far and the checkpoints done.
type walMark struct {
	lsn              string
	fpi, checkpoints int64
}

// walCounters are read from pg_stat_wal and pg_stat_bgwriter (Postgres 15
// and 16) or pg_stat_checkpointer (17 and later).
const walCounters = `select pg_current_wal_lsn()::text, (select wal_fpi from pg_stat_wal),
	coalesce((select checkpoints_timed + checkpoints_req from pg_stat_bgwriter), 0)`

const walCountersCheckpointer = `select pg_current_wal_lsn()::text, (select wal_fpi from pg_stat_wal),
	(select num_timed + num_requested from pg_stat_checkpointer)`

// markWAL reads where the server's WAL stands.
func markWAL(tb testing.TB, conn *pgx.Conn) walMark {
	tb.Helper()
	var m walMark
	var version int
	if err := conn.QueryRow(context.Background(), `select current_setting('server_version_num')::int`).Scan(&version); err != nil {
		tb.Fatalf("read the server version: %v", err)
	}
	q := walCounters
	if version >= 170000 {
		q = walCountersCheckpointer
	}
	if err := conn.QueryRow(context.Background(), q).Scan(&m.lsn, &m.fpi, &m.checkpoints); err != nil {
		tb.Fatalf("read the WAL position and counters: %v", err)
	}
	return m
}

// walSettings are the server settings that decide how many bytes a write
// costs in WAL beyond the rows themselves: after a checkpoint every page is
// written whole once (full_page_writes), compressed or not
// (wal_compression), and max_wal_size and checkpoint_timeout decide how
// often that happens.
func walSettings(tb testing.TB, conn *pgx.Conn) string {
	tb.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), `select format('full_page_writes %s, wal_compression %s, max_wal_size %s, checkpoint_timeout %s',
		current_setting('full_page_writes'), current_setting('wal_compression'), current_setting('max_wal_size'), current_setting('checkpoint_timeout'))`).Scan(&s); err != nil {
		return "(WAL settings unknown: " + err.Error() + ")"
	}
	return s
}

// walLSN returns the server's current WAL position.
func walLSN(tb testing.TB, conn *pgx.Conn) string {
	tb.Helper()
	var lsn string
	if err := conn.QueryRow(context.Background(), `select pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		tb.Fatalf("read the WAL position: %v", err)
	}
	return lsn
}

// walSince returns the bytes of WAL the whole server has written since lsn.
func walSince(tb testing.TB, conn *pgx.Conn, lsn string) int64 {
	tb.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), `select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint`, lsn).Scan(&n); err != nil {
		tb.Fatalf("read the WAL position: %v", err)
	}
	return n
}
