package local

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWithoutSecrets(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		removed  bool
	}{
		{"postgres://app@db:5432/telemesh?sslmode=disable", "postgres://app@db:5432/telemesh?sslmode=disable", false},
		{"postgres://app:hunter2@db:5432/telemesh?sslmode=disable", "postgres://app@db:5432/telemesh?sslmode=disable", true},
		{"postgres://app@db/telemesh?password=hunter2&sslmode=require", "postgres://app@db/telemesh?sslmode=require", true},
		{"host=db user=app password=hunter2 dbname=telemesh", "host=db user=app dbname=telemesh", true},
		{"host=db user=app password='hun ter2' dbname=telemesh", "host=db user=app dbname=telemesh", true},
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222", false},
		{"nats://s3cret-token@nats:4222", "nats://nats:4222", true},
		{"nats://u:hunter2@a:4222,nats://u:hunter2@b:4222", "nats://u@a:4222,nats://u@b:4222", true},
	} {
		got, removed := WithoutSecrets(tc.in)
		if got != tc.want || removed != tc.removed {
			t.Errorf("WithoutSecrets(%q) = %q, %v; want %q, %v", tc.in, got, removed, tc.want, tc.removed)
		}
		if strings.Contains(got, "hunter2") || strings.Contains(got, "s3cret") {
			t.Errorf("WithoutSecrets(%q) keeps a secret: %q", tc.in, got)
		}
	}
}

func TestMeshFileWriteReadRemove(t *testing.T) {
	dir := t.TempDir()
	path := MeshFilePath(dir)
	if _, err := ReadMeshFile(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read before write: %v, want not exist", err)
	}
	m := &MeshInfo{PID: os.Getpid(), StartedAt: time.Now().UTC().Truncate(time.Second), DataDir: dir,
		NATSURL: "nats://127.0.0.1:1", DatabaseURL: "postgres://app@db/telemesh",
		Stages: map[string]MeshProcess{"gateway": {GRPC: "127.0.0.1:7070", Admin: "127.0.0.1:9070"}}}
	if err := WriteMeshFile(path, m); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mesh file mode %v (%v), want 0600", fi.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".mesh.json.*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
	got, err := ReadMeshFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Stages["gateway"].GRPC != "127.0.0.1:7070" || !got.StartedAt.Equal(m.StartedAt) || !got.Running() {
		t.Errorf("read back %+v", got)
	}

	// Another process's file is left alone; one's own is removed.
	if err := RemoveMeshFile(path, os.Getpid()+1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("removed another process's mesh file: %v", err)
	}
	if err := RemoveMeshFile(path, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mesh file still there: %v", err)
	}

	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMeshFile(path); !errors.Is(err, ErrMeshFile) {
		t.Errorf("garbage: %v, want ErrMeshFile", err)
	}
}

func TestMeshInfoRunning(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if (&MeshInfo{PID: gone.Process.Pid}).Running() {
		t.Errorf("pid %d of an exited process reads as running", gone.Process.Pid)
	}
	if !(&MeshInfo{PID: os.Getpid()}).Running() {
		t.Errorf("this process reads as not running")
	}
	if (&MeshInfo{}).Running() {
		t.Errorf("pid 0 reads as running")
	}
}
