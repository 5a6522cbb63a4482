package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/local"
)

// exitNoMesh is the exit code of an operator command that finds no mesh to
// act on: the mesh file it was pointed at is missing, or the `telemesh up`
// that wrote it has stopped, or nothing at all was found. It is
// EX_UNAVAILABLE of sysexits.h, clear of the codes status and doctor give
// their verdicts.
const exitNoMesh = 69

// errNoMesh is the cause of every error an operator command returns when
// it finds no mesh.
var errNoMesh = errors.New("no mesh")

// noMesh returns the one-line error, with its exit code, of a command that
// finds no mesh.
func noMesh(format string, args ...any) error {
	return &exitCodeError{code: exitNoMesh, err: fmt.Errorf("%w: %s", errNoMesh, fmt.Sprintf(format, args...))}
}

// noMeshHelp is what to do when no mesh is found.
const noMeshHelp = "start one with `telemesh up`, or point at one with --mesh (TELEMESH_MESH) or the address flags and their TELEMESH_* variables"

// defaultDataDir is where `telemesh up` keeps its NATS store, its mesh
// file and, when it starts one, its Postgres cluster.
func defaultDataDir() string { return dataDirFrom(os.LookupEnv) }

// dataDirFrom is defaultDataDir for the environment lookup reads, so the
// operator commands look where an up in the same environment writes.
func dataDirFrom(lookup func(string) (string, bool)) string {
	if d, ok := lookup("XDG_DATA_HOME"); ok && d != "" {
		return filepath.Join(d, "telemesh")
	}
	if home, ok := lookup("HOME"); ok && home != "" {
		return filepath.Join(home, ".local", "share", "telemesh")
	}
	return filepath.Join(os.TempDir(), "telemesh")
}

// addMeshFileFlag registers --mesh, the mesh file an operator command
// reads what its other flags and the environment leave unset from.
func addMeshFileFlag(fs *pflag.FlagSet) {
	fs.String("mesh", "", "the file a running telemesh up writes in its --data-dir (mesh.json); the database, NATS and stage addresses not given by a flag or TELEMESH_* variable are read from it (default: the one in up's default data dir, if there)")
}

// meshValue returns what the mesh file m says for the flag name: the
// database and NATS URLs, and each stage's gRPC address as <stage>-addr.
func meshValue(m *local.MeshInfo, name string) string {
	switch name {
	case "database-url":
		return m.DatabaseURL
	case "nats-url":
		return m.NATSURL
	}
	if stage, ok := strings.CutSuffix(name, "-addr"); ok {
		return m.Stages[stage].GRPC
	}
	return ""
}

// fromMesh sets each of the named flags of fs that neither the command
// line nor the environment set from the mesh file of a running
// `telemesh up`, so the order is flags, environment, mesh file, defaults.
// Call it after [config.ApplyEnv]. The file is --mesh (TELEMESH_MESH), else
// mesh.json in up's default data dir.
//
// It returns the mesh it read, or nil when every flag was set or there is
// no file at the default place. A file named but missing, unreadable, or
// left by an up that is no longer running is a one-line error with exit
// code [exitNoMesh].
func fromMesh(fs *pflag.FlagSet, e env, names ...string) (*local.MeshInfo, error) {
	var missing []string
	for _, n := range names {
		if f := fs.Lookup(n); f != nil && !f.Changed {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	path, explicit := "", false
	if f := fs.Lookup("mesh"); f != nil && f.Value.String() != "" {
		path, explicit = f.Value.String(), true
	} else {
		path = local.MeshFilePath(dataDirFrom(e.lookupEnv))
	}
	m, err := local.ReadMeshFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !explicit:
		return nil, nil
	case errors.Is(err, os.ErrNotExist):
		return nil, noMesh("mesh file %s does not exist, so no telemesh up is running with it (up removes it when it stops); %s", path, noMeshHelp)
	case err != nil:
		return nil, noMesh("%v; remove it, then %s", err, noMeshHelp)
	case !m.Running():
		return nil, noMesh("the telemesh up that wrote %s (pid %d, started %s) is no longer running; %s",
			path, m.PID, m.StartedAt.Local().Format(time.DateTime), noMeshHelp)
	}
	sort.Strings(missing)
	for _, n := range missing {
		if v := meshValue(m, n); v != "" {
			if err := fs.Set(n, v); err != nil {
				return nil, config.Invalid(n, "from mesh file %s: %v", path, err)
			}
		}
	}
	return m, nil
}

// requiredDatabaseURL is the error of an operator command given no
// database at all.
func requiredDatabaseURL() error {
	return config.Invalid("database-url", "required (a running `telemesh up` gives it through its mesh file)")
}

// anyListening reports whether any of the addresses accepts a TCP
// connection within timeout.
func anyListening(addrs []string, timeout time.Duration) bool {
	found := make(chan bool, len(addrs))
	for _, a := range addrs {
		go func() {
			c, err := net.DialTimeout("tcp", a, timeout)
			if err == nil {
				_ = c.Close()
			}
			found <- err == nil
		}()
	}
	for range addrs {
		if <-found {
			return true
		}
	}
	return false
}

// locate fills the connection flags of status and doctor that are not set
// from the mesh file. With no mesh file and no stage address given, it
// checks that something listens on the default stage addresses: if
// nothing does, there is no mesh to report on, and that is one line rather
// than a report of every check failing.
func (m *meshFlags) locate(fs *pflag.FlagSet, e env) error {
	names := []string{"database-url", "nats-url"}
	for _, stage := range health.Stages {
		names = append(names, stage+"-addr")
	}
	info, err := fromMesh(fs, e, names...)
	if err != nil || info != nil {
		return err
	}
	var addrs []string
	for _, stage := range health.Stages {
		if fs.Lookup(stage + "-addr").Changed {
			return nil
		}
		addrs = append(addrs, *m.targets[stage])
	}
	if anyListening(addrs, 500*time.Millisecond) {
		return nil
	}
	return noMesh("no telemesh up is running (no mesh file at %s) and nothing listens on the default stage addresses %s; %s",
		local.MeshFilePath(dataDirFrom(e.lookupEnv)), strings.Join(addrs, ", "), noMeshHelp)
}
