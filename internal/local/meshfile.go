package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// MeshFileName is the name of the file `telemesh up` writes in its data
// directory while it runs.
const MeshFileName = "mesh.json"

// ErrMeshFile is the cause of every error reading a mesh file that exists
// but cannot be used.
var ErrMeshFile = errors.New("unreadable mesh file")

// MeshInfo is what a running `telemesh up` started, as the operator
// commands in other terminals need it to find the mesh. It never holds a
// secret: the database and NATS URLs are written without passwords or
// tokens, which the commands take from PGPASSWORD, ~/.pgpass or their own
// environment.
type MeshInfo struct {
	// PID is the process id of `telemesh up`; StartedAt when it started.
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	// DataDir is up's data directory, where this file lives.
	DataDir string `json:"data_dir"`
	// Processes says whether each stage runs as its own child process
	// (`up --processes`) rather than inside up.
	Processes bool `json:"processes"`
	// NATSURL and DatabaseURL are what the stages use, without secrets.
	NATSURL     string `json:"nats_url"`
	DatabaseURL string `json:"database_url"`
	// SecretsOmitted names what was taken out of the URLs above, so a
	// command that fails to authenticate can say where to put it.
	SecretsOmitted []string `json:"secrets_omitted,omitempty"`
	// Stages maps each stage's name to where it serves.
	Stages map[string]MeshProcess `json:"stages"`
	// Viewer is the Telemetry Viewer, when up started it.
	Viewer *MeshViewer `json:"viewer,omitempty"`
}

// MeshProcess is one stage of a mesh.
type MeshProcess struct {
	// GRPC is its gRPC address; Admin its admin HTTP address.
	GRPC  string `json:"grpc"`
	Admin string `json:"admin"`
	// PID is its own process id under `up --processes`, else zero.
	PID int `json:"pid,omitempty"`
}

// MeshViewer is the Telemetry Viewer of a mesh.
type MeshViewer struct {
	URL string `json:"url"`
	// PID is its own process id under `up --processes`, else zero.
	PID int `json:"pid,omitempty"`
}

// Running reports whether the process that wrote m is still alive.
func (m *MeshInfo) Running() bool { return processAlive(m.PID) }

// MeshFilePath returns where `telemesh up` with data directory dataDir
// writes its mesh file.
func MeshFilePath(dataDir string) string { return filepath.Join(dataDir, MeshFileName) }

// WriteMeshFile writes m to path atomically: a reader sees the old file or
// the new one, never half of one. The file is readable by its owner only.
func WriteMeshFile(path string, m *MeshInfo) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("mesh file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("mesh file: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("mesh file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("mesh file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("mesh file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("mesh file: %w", err)
	}
	return nil
}

// ReadMeshFile reads the mesh file at path. A file that does not exist
// gives an error wrapping [os.ErrNotExist]; one that is not a mesh file
// wraps [ErrMeshFile].
func ReadMeshFile(path string) (*MeshInfo, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: the path is the operator's own --mesh.
	if err != nil {
		return nil, err
	}
	var m MeshInfo
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrMeshFile, path, err)
	}
	if m.PID <= 0 {
		return nil, fmt.Errorf("%w %s: it names no process", ErrMeshFile, path)
	}
	return &m, nil
}

// RemoveMeshFile removes the mesh file at path if the process pid wrote
// it, so a stopping up never removes the file of another one that has
// since taken over the data directory.
func RemoveMeshFile(path string, pid int) error {
	m, err := ReadMeshFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil && m.PID != pid {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mesh file: %w", err)
	}
	return nil
}

// dsnPassword matches the password of a key=value connection string.
var dsnPassword = regexp.MustCompile(`(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)

// WithoutSecrets returns u, a database or NATS URL (or comma-separated
// list of NATS URLs, or a key=value Postgres connection string), without
// its password, token and secret query parameters, and whether anything
// was taken out. A user name is kept: it is not a secret, and the
// commands need it.
func WithoutSecrets(u string) (string, bool) {
	if !strings.Contains(u, "://") {
		out := dsnPassword.ReplaceAllString(u, "")
		return strings.TrimSpace(out), out != u
	}
	var parts []string
	removed := false
	for _, part := range strings.Split(u, ",") {
		p, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			// Nothing of a URL that cannot be parsed is kept: it may be all
			// secret.
			removed = true
			continue
		}
		if p.User != nil {
			if _, has := p.User.Password(); has {
				p.User = url.User(p.User.Username())
				removed = true
			} else if !strings.HasPrefix(p.Scheme, "postgres") {
				// A bare user part of a NATS URL is a token.
				p.User = nil
				removed = true
			}
		}
		q := p.Query()
		for k := range q {
			if lk := strings.ToLower(k); strings.Contains(lk, "password") || strings.Contains(lk, "token") ||
				strings.Contains(lk, "secret") {
				q.Del(k)
				removed = true
			}
		}
		p.RawQuery = q.Encode()
		parts = append(parts, p.String())
	}
	return strings.Join(parts, ","), removed
}
