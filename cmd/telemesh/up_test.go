package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/testdb"
)

// upSecret is the database password the up tests give; it must never be
// printed or written down.
const upSecret = "hunter2-up-secret"

// freeBase returns the first of n consecutive loopback ports that are free
// now, away from the defaults, as `up --grpc-port` and `--admin-port` take.
func freeBase(t *testing.T, n int) int {
	t.Helper()
	for range 200 {
		base := 20000 + rand.IntN(40000)
		var lns []net.Listener
		for i := range n {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		ok := len(lns) == n
		for _, ln := range lns {
			_ = ln.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free loopback ports found", n)
	return 0
}

// withPassword returns the database URL u with upSecret as its password;
// the test server trusts local connections, so it still connects.
func withPassword(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	p.User = url.UserPassword(p.User.Username(), upSecret)
	return p.String()
}

// upMesh is a `telemesh up` run by a test.
type upMesh struct {
	*captured
	dataDir, meshFile string
	grpc, admin       int
}

// startUp runs `telemesh up` on free ports with its own data directory and
// the database at dbURL, and waits until it says it is running.
func startUp(t *testing.T, dbURL string, args ...string) *upMesh {
	t.Helper()
	u := &upMesh{dataDir: t.TempDir(), grpc: freeBase(t, 5), admin: freeBase(t, 5)}
	u.meshFile = filepath.Join(u.dataDir, "mesh.json")
	args = append([]string{"up", "--data-dir", u.dataDir,
		"--grpc-port", strconv.Itoa(u.grpc), "--admin-port", strconv.Itoa(u.admin)}, args...)
	u.captured = startCaptured(t, []string{"TELEMESH_DATABASE_URL=" + dbURL}, args...)
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(u.stdout.String(), "Ctrl-C stops it") {
		select {
		case err := <-u.done:
			u.done <- err
			t.Fatalf("up exited (%v) before running:\nstdout:\n%s\nstderr:\n%s", err, u.stdout, u.stderr)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("up not running after 2 minutes:\nstdout:\n%s\nstderr:\n%s", u.stdout, u.stderr)
		}
	}
	return u
}

// interrupt sends SIGINT, as Ctrl-C does, and returns up's exit error.
func (u *upMesh) interrupt(t *testing.T) error {
	t.Helper()
	if err := u.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-u.done:
		u.done <- err
		return err
	case <-time.After(2 * time.Minute):
		t.Fatalf("up still running 2 minutes after SIGINT:\nstdout:\n%s\nstderr:\n%s", u.stdout, u.stderr)
		return nil
	}
}

// grpcAddr is the gRPC address up gives stage i of the chain.
func (u *upMesh) grpcAddr(i int) string { return "127.0.0.1:" + strconv.Itoa(u.grpc+i) }

// waitCompleted waits until n messages are completed and processed in the
// database at dbURL.
func waitCompleted(t *testing.T, db *testdb.DB, n int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var done int
		if err := db.Pool.QueryRow(t.Context(), `select count(*) from ingestion_messages m
			join device_telemetry_logs t on t.id = m.id
			where m.status = 'completed' and t.processing_state = 'processed'`).Scan(&done); err != nil {
			t.Fatal(err)
		}
		if done == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages completed and processed after 90s, want %d", done, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkOneLine fails unless a command printed nothing on stdout and exactly
// one line on stderr containing every want, and exited with code.
func checkOneLine(t *testing.T, what, stdout, stderr string, code, wantCode int, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != wantCode || stdout != "" || len(lines) != 1 {
		t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit %d and one line", what, code, stdout, stderr, wantCode)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("%s: %q lacks %q", what, lines[0], w)
		}
	}
}

// TestUpIsFoundThroughItsMeshFile runs up on ports other than the defaults
// and points the operator commands at it with nothing but the export line
// it prints; the database password it was given appears nowhere. Once up
// has stopped, the commands say in one line that there is no mesh.
func TestUpIsFoundThroughItsMeshFile(t *testing.T) {
	db := testdb.NewEmpty(t)
	u := startUp(t, withPassword(t, db.URL), "--viewer-listen", closedPort(t))
	out := u.stdout.String()

	export := "export TELEMESH_MESH=" + u.meshFile
	if !strings.Contains(out, export) {
		t.Fatalf("up does not print %q:\n%s", export, out)
	}
	b, err := os.ReadFile(u.meshFile)
	if err != nil {
		t.Fatalf("mesh file: %v", err)
	}
	var mf struct {
		PID         int    `json:"pid"`
		DatabaseURL string `json:"database_url"`
		NATSURL     string `json:"nats_url"`
		Stages      map[string]struct {
			GRPC  string `json:"grpc"`
			Admin string `json:"admin"`
		} `json:"stages"`
		Viewer struct {
			URL string `json:"url"`
		} `json:"viewer"`
	}
	if err := json.Unmarshal(b, &mf); err != nil {
		t.Fatalf("mesh file is not JSON: %v\n%s", err, b)
	}
	if mf.PID != u.cmd.Process.Pid || mf.NATSURL == "" || mf.Viewer.URL == "" || !strings.Contains(mf.DatabaseURL, "127.0.0.1:5432") {
		t.Errorf("mesh file lacks what up started (pid %d):\n%s", u.cmd.Process.Pid, b)
	}
	for i, stage := range app.Stages {
		if got := mf.Stages[stage].GRPC; got != u.grpcAddr(i) {
			t.Errorf("mesh file: %s at %q, want %s", stage, got, u.grpcAddr(i))
		}
	}

	env := []string{"TELEMESH_MESH=" + u.meshFile}
	t.Run("status", func(t *testing.T) {
		stdout, stderr, code := runBinary(t, env, "status", "--json")
		if code != 0 {
			t.Fatalf("status: exit %d\n%s\n%s", code, stdout, stderr)
		}
		var rep struct {
			Healthy bool `json:"healthy"`
			Stages  []struct {
				Stage, Target, Status string
			} `json:"stages"`
		}
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("%v:\n%s", err, stdout)
		}
		if !rep.Healthy || len(rep.Stages) != 5 {
			t.Fatalf("status through the mesh file:\n%s", stdout)
		}
		for i, s := range rep.Stages {
			if s.Target != u.grpcAddr(i) || s.Status != "SERVING" {
				t.Errorf("stage %s at %s is %s, want %s SERVING", s.Stage, s.Target, s.Status, u.grpcAddr(i))
			}
		}
	})
	t.Run("simulate, doctor, trace, flags, replay", func(t *testing.T) {
		if stdout, stderr, code := runBinary(t, env, "simulate", "--count", "10", "--rate", "0"); code != 0 {
			t.Fatalf("simulate: exit %d\n%s\n%s", code, stdout, stderr)
		}
		waitCompleted(t, db, 10)
		if stdout, stderr, code := runBinary(t, env, "doctor", "--window", "300ms"); code != 0 || !strings.Contains(stdout, "verdict: healthy") {
			t.Errorf("doctor: exit %d\n%s\n%s", code, stdout, stderr)
		}
		var id string
		if err := db.Pool.QueryRow(t.Context(), `select id::text from ingestion_messages limit 1`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"trace", id}, {"flags", "get"}, {"replay", "publish-failed", "--dry-run"}, {"devices", "list"}} {
			if stdout, stderr, code := runBinary(t, env, args...); code != 0 {
				t.Errorf("telemesh %s: exit %d\n%s\n%s", strings.Join(args, " "), code, stdout, stderr)
			}
		}
	})

	if err := u.interrupt(t); err != nil {
		t.Fatalf("up after SIGINT: %v\n%s", err, u.stderr)
	}
	for _, where := range []struct{ name, text string }{{"stdout", u.stdout.String()}, {"stderr", u.stderr.String()}, {"the mesh file", string(b)}} {
		if strings.Contains(where.text, upSecret) {
			t.Errorf("the database password is in up's %s:\n%s", where.name, where.text)
		}
	}
	if _, err := os.Stat(u.meshFile); !os.IsNotExist(err) {
		t.Errorf("mesh file after a clean stop: %v, want it removed", err)
	}
	stdout, stderr, code := runBinary(t, env, "status")
	checkOneLine(t, "status after up stopped", stdout, stderr, code, exitNoMesh, "no mesh", u.meshFile, "telemesh up")
}

// TestUpNoDemoPrintsOnlyWhatApplies checks that up without the demo fleet
// prints no hint that needs it, and never the database password.
func TestUpNoDemoPrintsOnlyWhatApplies(t *testing.T) {
	db := testdb.NewEmpty(t)
	u := startUp(t, withPassword(t, db.URL), "--no-demo", "--viewer-listen", "")
	out := u.stdout.String()
	for _, demoOnly := range []string{"thermo-01", "telemesh simulate", "Demo "} {
		if strings.Contains(out, demoOnly) {
			t.Errorf("up --no-demo prints %q:\n%s", demoOnly, out)
		}
	}
	for _, want := range []string{u.grpcAddr(0), "export TELEMESH_MESH=" + u.meshFile, "telemesh schema apply", "telemesh devices add"} {
		if !strings.Contains(out, want) {
			t.Errorf("up --no-demo lacks %q:\n%s", want, out)
		}
	}
	if err := u.interrupt(t); err != nil {
		t.Fatalf("up after SIGINT: %v\n%s", err, u.stderr)
	}
	if strings.Contains(u.stdout.String()+u.stderr.String(), upSecret) {
		t.Errorf("the database password is in up's output:\n%s\n%s", u.stdout, u.stderr)
	}
}

// TestCommandsWithoutAMeshSayOneLine checks that a mesh file whose up is
// gone, or one that is named but missing, is one line and its own exit
// code for every command that reads it, not a report of every check that
// failed.
func TestCommandsWithoutAMeshSayOneLine(t *testing.T) {
	dir := t.TempDir()
	// The pid of a process that has exited.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "mesh.json")
	body := fmt.Sprintf(`{"pid": %d, "started_at": "2026-01-02T15:04:05Z", "database_url": "postgres://postgres@127.0.0.1:5432/telemesh",
		"nats_url": "nats://127.0.0.1:1", "stages": {"gateway": {"grpc": "127.0.0.1:1", "admin": "127.0.0.1:2"}}}`, gone.Process.Pid)
	if err := os.WriteFile(stale, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nothing-here.json")
	commands := [][]string{{"status"}, {"doctor"}, {"trace", "m-1"}, {"flags", "get"}, {"replay", "publish-failed"},
		{"devices", "list"}, {"simulate", "--count", "1"}, {"retention", "--dry-run"}}
	for _, file := range []struct{ name, path, want string }{{"stale", stale, strconv.Itoa(gone.Process.Pid)}, {"missing", missing, "does not exist"}} {
		for _, args := range commands {
			t.Run(file.name+" "+args[0], func(t *testing.T) {
				t.Parallel()
				stdout, stderr, code := runBinary(t, []string{"TELEMESH_MESH=" + file.path}, args...)
				checkOneLine(t, strings.Join(args, " "), stdout, stderr, code, exitNoMesh, "no mesh", file.path, file.want, "telemesh up")
			})
		}
	}
	t.Run("flags win over a stale file", func(t *testing.T) {
		db := testdb.New(t)
		stdout, stderr, code := runBinary(t, []string{"TELEMESH_MESH=" + stale, "TELEMESH_DATABASE_URL=" + db.URL}, "flags", "get")
		if code != 0 || !strings.Contains(stdout, "global") {
			t.Errorf("flags get with the database given: exit %d\n%s\n%s", code, stdout, stderr)
		}
	})
}

// TestUpProcessesRunsEachStageAsItsOwnProcess runs up --processes: every
// stage and the viewer are child processes of their own, found through the
// mesh file, that process messages; Ctrl-C stops them gateway first and
// leaves none behind.
func TestUpProcessesRunsEachStageAsItsOwnProcess(t *testing.T) {
	db := testdb.NewEmpty(t)
	u := startUp(t, withPassword(t, db.URL), "--processes", "--log-level", "info", "--viewer-listen", closedPort(t))
	b, err := os.ReadFile(u.meshFile)
	if err != nil {
		t.Fatalf("mesh file: %v", err)
	}
	var mf struct {
		Processes bool `json:"processes"`
		Stages    map[string]struct {
			GRPC string `json:"grpc"`
			PID  int    `json:"pid"`
		} `json:"stages"`
		Viewer struct {
			URL string `json:"url"`
			PID int    `json:"pid"`
		} `json:"viewer"`
	}
	if err := json.Unmarshal(b, &mf); err != nil {
		t.Fatalf("%v:\n%s", err, b)
	}
	pids := map[string]int{"viewer": mf.Viewer.PID}
	for _, stage := range app.Stages {
		pids[stage] = mf.Stages[stage].PID
	}
	for name, pid := range pids {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || pid == u.cmd.Process.Pid {
			t.Fatalf("%s: pid %d is not a process of its own (%v):\n%s", name, pid, err, b)
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) < 3 || args[1] != "serve" || args[2] != name {
			t.Errorf("%s runs %q, want telemesh serve %s", name, args, name)
		}
		if strings.Contains(string(cmdline), upSecret) {
			t.Errorf("%s has the database password on its command line: %q", name, args)
		}
	}
	if !mf.Processes {
		t.Errorf("mesh file does not say the stages are processes:\n%s", b)
	}

	env := []string{"TELEMESH_MESH=" + u.meshFile}
	if stdout, stderr, code := runBinary(t, env, "simulate", "--count", "20", "--rate", "0"); code != 0 {
		t.Fatalf("simulate: exit %d\n%s\n%s", code, stdout, stderr)
	}
	waitCompleted(t, db, 20)
	if stdout, stderr, code := runBinary(t, env, "status"); code != 0 {
		t.Errorf("status: exit %d\n%s\n%s", code, stdout, stderr)
	}

	if err := u.interrupt(t); err != nil {
		t.Fatalf("up --processes after SIGINT: %v\nstdout:\n%s\nstderr:\n%s", err, u.stdout, u.stderr)
	}
	// Every child was waited for, so none is left, not even as a zombie.
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("%s (pid %d) still exists after up stopped: %v", name, pid, err)
		}
	}
	// The children stopped in the reverse of the start order.
	logs := u.stderr.String()
	last := -1
	for _, name := range []string{"viewer", "gateway", "validator", "deriver", "persister", "publisher"} {
		at := stoppedAt(logs, name)
		if at < 0 || at < last {
			t.Errorf("%s did not log that it stopped after the one before it:\n%s", name, logs)
		}
		last = at
	}
	if strings.Contains(u.stdout.String()+logs, upSecret) {
		t.Errorf("the database password is in up's output")
	}
}

// stoppedAt returns where in logs the child name's "stopped" line is, or
// -1; a child's output lines are prefixed with its name.
func stoppedAt(logs, name string) int {
	at := 0
	for _, line := range strings.SplitAfter(logs, "\n") {
		if strings.HasPrefix(line, name+" ") && strings.Contains(line, "| ") && strings.Contains(line, "msg=stopped") {
			return at
		}
		at += len(line)
	}
	return -1
}

// TestUpProcessesReportsAChildThatDies kills one stage process of
// up --processes: up says which stage exited, stops the others and exits
// non-zero.
func TestUpProcessesReportsAChildThatDies(t *testing.T) {
	db := testdb.NewEmpty(t)
	u := startUp(t, db.URL, "--processes", "--no-demo", "--viewer-listen", "")
	b, err := os.ReadFile(u.meshFile)
	if err != nil {
		t.Fatalf("mesh file: %v", err)
	}
	var mf struct {
		Stages map[string]struct {
			PID int `json:"pid"`
		} `json:"stages"`
	}
	if err := json.Unmarshal(b, &mf); err != nil {
		t.Fatal(err)
	}
	victim := mf.Stages[app.Deriver].PID
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatalf("kill deriver (pid %d): %v", victim, err)
	}
	var exitErr error
	select {
	case exitErr = <-u.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("up still running 2 minutes after its deriver died:\n%s", u.stderr)
	}
	var exit *exec.ExitError
	if exitErr == nil || !errors.As(exitErr, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("up exited %v, want exit code 1", exitErr)
	}
	if want := fmt.Sprintf("deriver (pid %d) exited unexpectedly", victim); !strings.Contains(u.stderr.String(), want) {
		t.Errorf("up's output lacks %q:\n%s", want, u.stderr)
	}
	for stage, s := range mf.Stages {
		if err := syscall.Kill(s.PID, 0); err != syscall.ESRCH {
			t.Errorf("%s (pid %d) still exists after up stopped: %v", stage, s.PID, err)
		}
	}
	if _, err := os.Stat(u.meshFile); !os.IsNotExist(err) {
		t.Errorf("mesh file after up stopped: %v, want it removed", err)
	}
}

// TestStatusWithNothingOnTheDefaultsSaysOneLine runs status and doctor in
// this process with no mesh file and nothing listening where they look by
// default: one line saying there is no mesh, not a report of every check
// failing. (The defaults are pointed at closed ports, as flag values that
// were not set, because 7070-7074 may be in use on the machine running the
// test.)
func TestStatusWithNothingOnTheDefaultsSaysOneLine(t *testing.T) {
	empty := t.TempDir()
	lookup := func(k string) (string, bool) {
		switch k {
		case "XDG_DATA_HOME":
			return empty, true
		case "TELEMESH_DATABASE_URL":
			return "postgres://postgres@127.0.0.1:5432/telemesh", true
		}
		return "", false
	}
	for _, name := range []string{"status", "doctor"} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			e := env{stdout: &stdout, stderr: &stderr, lookupEnv: lookup}
			root := newRootCmd(e)
			cmd, _, err := root.Find([]string{name})
			if err != nil {
				t.Fatal(err)
			}
			for _, stage := range app.Stages {
				if err := cmd.Flags().Lookup(stage + "-addr").Value.Set(closedPort(t)); err != nil {
					t.Fatal(err)
				}
			}
			root.SetArgs([]string{name})
			err = root.ExecuteContext(t.Context())
			var coded *exitCodeError
			if !errors.As(err, &coded) || coded.code != exitNoMesh {
				t.Fatalf("err %v, want exit code %d", err, exitNoMesh)
			}
			msg := err.Error()
			for _, want := range []string{"no mesh", filepath.Join(empty, "telemesh", "mesh.json"), "nothing listens", "telemesh up"} {
				if !strings.Contains(msg, want) {
					t.Errorf("%q lacks %q", msg, want)
				}
			}
			if strings.Contains(msg, "\n") || stdout.Len() > 0 {
				t.Errorf("not one line: %q, stdout %q", msg, stdout.String())
			}
		})
	}
}
