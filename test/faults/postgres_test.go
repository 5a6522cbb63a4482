package faults_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/migrate"
)

// database is where one fault's mesh keeps its rows: a fresh database on
// the shared server, or a private cluster the suite may restart.
type database struct {
	URL  string
	Pool *pgxpool.Pool
}

// privatePostgres is a Postgres cluster of the suite's own, started with
// initdb and pg_ctl on a free port, so restarting it disturbs no other test
// (the shared server on 5432 is never touched). As root, Postgres runs as
// the postgres user, as internal/local does for `telemesh up`.
type privatePostgres struct {
	dir, pgctl, opts string
	port             int
}

// startPrivatePostgres creates, starts, migrates and seeds a private
// cluster. It fails the test, saying what to install, when the Postgres
// binaries are missing. The cluster is stopped and removed when the test
// ends.
func startPrivatePostgres(t testing.TB) (*privatePostgres, *database) {
	t.Helper()
	initdb, pgctl := findPostgresBinary("initdb"), findPostgresBinary("pg_ctl")
	if initdb == "" || pgctl == "" {
		t.Fatalf("the Postgres restart fault needs initdb and pg_ctl (in PATH or /usr/lib/postgresql/*/bin) to run a private cluster; " +
			"install the server binaries (Debian/Ubuntu: apt-get install postgresql)")
	}
	// Not t.TempDir: as root the cluster belongs to the postgres user,
	// who cannot enter a directory only root may.
	dir, err := os.MkdirTemp("", "telemesh-faults-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		pgUser, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, the private cluster needs a postgres user to own it: %v", err)
		}
		uid, _ := strconv.Atoi(pgUser.Uid)
		gid, _ := strconv.Atoi(pgUser.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	pg := &privatePostgres{dir: filepath.Join(dir, "data"), pgctl: pgctl, port: freePort(t)}
	pg.opts = fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", pg.port, dir)
	if out, err := runAsPostgres(t.Context(), initdb, "-D", pg.dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	pg.ctl(t, "start", "-w", "-t", "60", "-l", pg.log(), "-o", pg.opts)
	t.Cleanup(func() {
		_ = runAsPostgres(context.Background(), pg.pgctl, "-D", pg.dir, "-m", "immediate", "-w", "stop").Run()
	})

	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := migrate.Up(ctx, url, nil); err != nil {
		t.Fatalf("migrate the private cluster: %v", err)
	}
	return pg, openDatabase(t, url)
}

// restart restarts the cluster in fast mode, which ends every session at
// once, as a failover or an operator's restart would. With down > 0 the
// cluster stays stopped that long in between.
func (pg *privatePostgres) restart(t testing.TB, down time.Duration) {
	t.Helper()
	if down <= 0 {
		pg.ctl(t, "restart", "-m", "fast", "-w", "-t", "60", "-l", pg.log(), "-o", pg.opts)
		return
	}
	pg.ctl(t, "stop", "-m", "fast", "-w", "-t", "60")
	time.Sleep(down)
	pg.ctl(t, "start", "-w", "-t", "60", "-l", pg.log(), "-o", pg.opts)
}

// log is the server's log file. Every start names it: a server started
// without one would write to pg_ctl's output and hold it open.
func (pg *privatePostgres) log() string { return filepath.Join(filepath.Dir(pg.dir), "server.log") }

func (pg *privatePostgres) ctl(t testing.TB, args ...string) {
	t.Helper()
	cmd := runAsPostgres(t.Context(), pg.pgctl, append([]string{"-D", pg.dir}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(pg.log())
		t.Fatalf("pg_ctl %v: %v\n%s\nserver log:\n%s", args, err, out, log)
	}
}

// runAsPostgres runs a Postgres tool, as the postgres user when running as
// root: initdb and the server refuse to run as root.
// The server pg_ctl starts may inherit its output; WaitDelay keeps that
// from holding up the wait for pg_ctl itself.
func runAsPostgres(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// findPostgresBinary looks in PATH, then where distributions install the
// server binaries, newest version first.
func findPostgresBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range append(dirs, "/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin") {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// openDatabase opens a pool on url, seeds the demo fleet and closes the
// pool when the test ends.
func openDatabase(t testing.TB, url string) *database {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := demo.Seed(t.Context(), pool); err != nil {
		t.Fatalf("seed the demo fleet: %v", err)
	}
	return &database{URL: url, Pool: pool}
}
