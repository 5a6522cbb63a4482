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
	// name is the server's cluster_name, which a standby also gives the
	// primary as its application_name.
	name             string
	dir, pgctl, opts string
	port             int
}

// startPrivatePostgres creates, starts, migrates and seeds a private
// cluster. It fails the test, saying what to install, when the Postgres
// binaries are missing. The cluster is stopped and removed when the test
// ends.
func startPrivatePostgres(t testing.TB) (*privatePostgres, *database) {
	t.Helper()
	root := postgresRoot(t)
	pg := newPrivatePostgres(t, root, "data")
	pg.initdb(t)
	pg.start(t)

	url := pg.url()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := migrate.Up(ctx, url, nil); err != nil {
		t.Fatalf("migrate the private cluster: %v", err)
	}
	return pg, openDatabase(t, url)
}

// postgresRoot makes a directory for private clusters and their sockets,
// removed when the test ends. Not t.TempDir: as root the clusters belong
// to the postgres user, who cannot enter a directory only root may.
func postgresRoot(t testing.TB) string {
	t.Helper()
	if findPostgresBinary("initdb") == "" || findPostgresBinary("pg_ctl") == "" {
		t.Fatalf("the Postgres faults need initdb and pg_ctl (in PATH or /usr/lib/postgresql/*/bin) to run private clusters; " +
			"install the server binaries (Debian/Ubuntu: apt-get install postgresql)")
	}
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
	return dir
}

// newPrivatePostgres describes a cluster in root/name on a free port,
// with its socket in root. Nothing is created yet.
func newPrivatePostgres(t testing.TB, root, name string) *privatePostgres {
	t.Helper()
	pg := &privatePostgres{name: name, dir: filepath.Join(root, name), pgctl: findPostgresBinary("pg_ctl"), port: freePort(t)}
	pg.opts = fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c cluster_name=%s", pg.port, root, name)
	return pg
}

// initdb creates the cluster.
func (pg *privatePostgres) initdb(t testing.TB) {
	t.Helper()
	initdb := findPostgresBinary("initdb")
	if out, err := runAsPostgres(t.Context(), initdb, "-D", pg.dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
}

// start starts the cluster and stops it, at once, when the test ends.
func (pg *privatePostgres) start(t testing.TB) {
	t.Helper()
	pg.resume(t)
	t.Cleanup(func() {
		// A cluster the fault killed has no postmaster.pid left: nothing
		// to stop, and no stale pid to signal.
		if _, err := os.Stat(filepath.Join(pg.dir, "postmaster.pid")); err != nil {
			return
		}
		_ = runAsPostgres(context.Background(), pg.pgctl, "-D", pg.dir, "-m", "immediate", "-w", "stop").Run()
	})
}

// url connects to this server alone.
func (pg *privatePostgres) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
}

// restart restarts the cluster in fast mode, which ends every session at
// once, as a failover or an operator's restart would.
func (pg *privatePostgres) restart(t testing.TB) {
	t.Helper()
	pg.ctl(t, "restart", "-m", "fast", "-w", "-t", "60", "-l", pg.log(), "-o", pg.opts)
}

// stop stops the cluster in fast mode; resume starts it again.
func (pg *privatePostgres) stop(t testing.TB) {
	t.Helper()
	pg.ctl(t, "stop", "-m", "fast", "-w", "-t", "60")
}

func (pg *privatePostgres) resume(t testing.TB) {
	t.Helper()
	pg.ctl(t, "start", "-w", "-t", "60", "-l", pg.log(), "-o", pg.opts)
}

// log is the server's log file. Every start names it: a server started
// without one would write to pg_ctl's output and hold it open.
func (pg *privatePostgres) log() string {
	return filepath.Join(filepath.Dir(pg.dir), pg.name+".log")
}

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
