package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres says no Postgres could be found or started; its message says
// what to install.
var ErrNoPostgres = errors.New("no Postgres found: set TELEMESH_DATABASE_URL, start a server on 127.0.0.1:5432, or install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) so telemesh can start a private one")

// Postgres is the database `telemesh up` uses.
type Postgres struct {
	// URL is the database's connection URL.
	URL string
	// Where says where it came from, for the operator.
	Where string
	stop  func() error
}

// Stop stops a private cluster telemesh started; it does nothing otherwise.
func (p *Postgres) Stop() error {
	if p.stop == nil {
		return nil
	}
	return p.stop()
}

// FindPostgres returns a database named dbName: on the server at
// configuredURL if given, else on the local server on 127.0.0.1:5432, else
// on a private cluster started from the installed Postgres binaries under
// dataDir. The database is created when it does not exist.
func FindPostgres(ctx context.Context, configuredURL, dataDir, dbName string, logger *slog.Logger) (*Postgres, error) {
	if configuredURL != "" {
		return &Postgres{URL: configuredURL, Where: "TELEMESH_DATABASE_URL"}, nil
	}
	for _, u := range localCandidates(dbName) {
		if err := ensureDatabase(ctx, u); err == nil {
			return &Postgres{URL: u, Where: "the local server on 127.0.0.1:5432"}, nil
		} else {
			logger.Debug("local postgres not usable", "err", err)
		}
	}
	return startPrivate(ctx, dataDir, dbName, logger)
}

func localCandidates(db string) []string {
	users := []string{}
	if u, err := user.Current(); err == nil {
		users = append(users, u.Username)
	}
	users = append(users, "postgres")
	var out []string
	for _, u := range users {
		out = append(out, fmt.Sprintf("postgres://%s@127.0.0.1:5432/%s?sslmode=disable", url.PathEscape(u), db))
	}
	return out
}

// ensureDatabase connects to the database in u, creating it through the
// server's postgres database when it is missing.
func ensureDatabase(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err == nil {
		return conn.Close(ctx)
	}
	parsed, perr := url.Parse(u)
	if perr != nil {
		return perr
	}
	db := strings.TrimPrefix(parsed.Path, "/")
	admin := *parsed
	admin.Path = "/postgres"
	aconn, aerr := pgx.Connect(ctx, admin.String())
	if aerr != nil {
		return fmt.Errorf("%w (and %v)", err, aerr)
	}
	defer aconn.Close(ctx)
	if _, cerr := aconn.Exec(ctx, "create database "+pgx.Identifier{db}.Sanitize()); cerr != nil {
		return fmt.Errorf("create database %s: %w", db, cerr)
	}
	return nil
}

// pgBinDirs lists where Postgres binaries are looked for besides PATH.
func pgBinDirs() []string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	return append(dirs, "/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin")
}

func findBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range pgBinDirs() {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// startPrivate starts a cluster of its own under dataDir/postgres on a free
// port. initdb refuses to run as root, so as root it runs as the postgres
// user.
func startPrivate(ctx context.Context, dataDir, dbName string, logger *slog.Logger) (*Postgres, error) {
	initdb, pgctl := findBinary("initdb"), findBinary("pg_ctl")
	if initdb == "" || pgctl == "" {
		return nil, ErrNoPostgres
	}
	dir := filepath.Join(dataDir, "postgres")
	runAs := func(name string, args ...string) *exec.Cmd {
		if os.Geteuid() == 0 {
			return exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
		}
		return exec.CommandContext(ctx, name, args...)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		pgUser, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user to own the private cluster: %w", err)
		}
		uid, _ := strconv.Atoi(pgUser.Uid)
		gid, _ := strconv.Atoi(pgUser.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		logger.Info("creating a private Postgres cluster", "dir", dir)
		out, err := runAs(initdb, "-D", dir, "-U", "postgres", "-A", "trust", "-E", "UTF8").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("initdb: %w: %s", err, out)
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", port, dir)
	out, err := runAs(pgctl, "-D", dir, "-l", filepath.Join(dir, "server.log"), "-o", opts, "-w", "start").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("pg_ctl start: %w: %s", err, out)
	}
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, dbName)
	if err := ensureDatabase(ctx, u); err != nil {
		return nil, err
	}
	stop := func() error {
		out, err := runAs(pgctl, "-D", dir, "-m", "fast", "-w", "stop").CombinedOutput()
		if err != nil {
			return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
		}
		return nil
	}
	return &Postgres{URL: u, Where: "a private cluster in " + dir, stop: stop}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
