package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// telemeshBin is the binary under test, built once by TestMain.
var telemeshBin string

// builtCommit is the commit TestMain linked into telemeshBin, as the
// Makefile links it.
var builtCommit string

// testWait bounds each wait for a process or the mesh to do something:
// generous, because on a busy machine that can take seconds, and a passing
// test never waits it out.
const testWait = 2 * time.Minute

// stopGrace is the shutdown grace the tests give a process they stop: far
// longer than an idle process takes to stop even on a busy machine, so a
// stop that waits it out shows.
const stopGrace = time.Minute

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "telemesh-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	telemeshBin = filepath.Join(dir, "telemesh")
	// Linked as the Makefile links it, with the commit and its date.
	head, _ := exec.Command("git", "rev-parse", "HEAD").Output()
	when, _ := exec.Command("git", "log", "-1", "--format=%cI").Output()
	builtCommit = strings.TrimSpace(string(head))
	ldflags := "-X main.commit=" + builtCommit + " -X main.date=" + strings.TrimSpace(string(when))
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", telemeshBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build telemesh:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a telemesh process started by a test.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	served chan map[string]any
	done   chan error
}

// startTelemesh runs the binary with args and extra environment; its JSON
// log lines are collected.
func startTelemesh(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(telemeshBin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, served: make(chan map[string]any, 1), done: make(chan error, 1)}
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "serving" {
				p.served <- rec
			}
		}
	}()
	// exited closes once Wait has returned: Wait sets cmd.ProcessState,
	// so the cleanup must not read that field while Wait may still run.
	exited := make(chan struct{})
	go func() {
		<-scanDone
		err := cmd.Wait()
		close(exited)
		p.done <- err
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

func TestServeEachStage(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	for _, name := range app.Stages {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := startTelemesh(t, []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_NATS_URL=" + ns.URL()},
				"serve", name, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
				"--log-format", "json", "--shutdown-grace", stopGrace.String())
			var rec map[string]any
			select {
			case rec = <-p.served:
			case err := <-p.done:
				t.Fatalf("exited before serving: %v\n%s", err, p.output())
			case <-time.After(testWait):
				t.Fatalf("not serving after %s:\n%s", testWait, p.output())
			}
			addr, _ := rec["grpc"].(string)
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(t.Context(), testWait)
			defer cancel()

			// What `grpcurl -plaintext ADDR list` asks.
			services := listServices(ctx, t, conn)
			want := []string{
				"telemesh." + name + ".v1." + strings.ToUpper(name[:1]) + name[1:] + "Service",
				"grpc.health.v1.Health",
				"grpc.reflection.v1.ServerReflection",
			}
			for _, w := range want {
				if !contains(services, w) {
					t.Errorf("services = %v, want %s", services, w)
				}
			}

			// What `grpcurl -plaintext ADDR grpc.health.v1.Health/Check` asks:
			// SERVING once the stage's catalog has loaded.
			testutil.Eventually(t, testWait, name+" SERVING", func() error {
				hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
				if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					return fmt.Errorf("health = %v, %v", hc.GetStatus(), err)
				}
				return nil
			})

			start := time.Now()
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-p.done:
				if err != nil {
					t.Fatalf("exit after SIGTERM: %v\n%s", err, p.output())
				}
			case <-time.After(testWait):
				t.Fatalf("still running %s after SIGTERM (grace %s):\n%s", testWait, stopGrace, p.output())
			}
			if took := time.Since(start); took > stopGrace {
				t.Errorf("shutdown took %s, longer than the %s grace", took, stopGrace)
			}
			if !strings.Contains(p.output(), `"msg":"stopped"`) {
				t.Errorf("no 'stopped' log line:\n%s", p.output())
			}
		})
	}
}

func listServices(ctx context.Context, t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestBadSettingsStopStartup(t *testing.T) {
	db := testdb.New(t)
	tests := []struct {
		name     string
		env      []string
		args     []string
		wantLine string
	}{
		{
			name:     "malformed database url",
			env:      []string{"TELEMESH_DATABASE_URL=postgres://app:hunter2@db:notaport/x"},
			args:     []string{"serve", "validator"},
			wantLine: "invalid setting --database-url (TELEMESH_DATABASE_URL)",
		},
		{
			name:     "port out of range",
			env:      []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_LISTEN=127.0.0.1:70000"},
			args:     []string{"serve", "deriver"},
			wantLine: "invalid setting --listen (TELEMESH_LISTEN): \"127.0.0.1:70000\": port 70000 is out of range 0-65535",
		},
		{
			name:     "admin port out of range by flag",
			env:      []string{"TELEMESH_DATABASE_URL=" + db.URL},
			args:     []string{"serve", "persister", "--admin-listen", ":99999"},
			wantLine: "invalid setting --admin-listen (TELEMESH_ADMIN_LISTEN)",
		},
		{
			name:     "next hop with a bad scheme",
			env:      []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_DERIVER_ADDR=http://deriver:7072"},
			args:     []string{"serve", "validator"},
			wantLine: "invalid setting --deriver-addr (TELEMESH_DERIVER_ADDR)",
		},
		{
			name:     "unparsable duration",
			env:      []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_SHUTDOWN_GRACE=soon"},
			args:     []string{"serve", "publisher"},
			wantLine: "invalid setting --shutdown-grace (TELEMESH_SHUTDOWN_GRACE)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), telemeshBin, tt.args...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("err = %v, want exit code 2; output:\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tt.wantLine) {
				t.Fatalf("output = %q, want one line containing %q", out, tt.wantLine)
			}
			if strings.Contains(string(out), "hunter2") {
				t.Fatalf("password printed: %s", out)
			}
		})
	}
}

func TestMigrateUpDownUp(t *testing.T) {
	db := testdb.NewEmpty(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), telemeshBin, args...)
		cmd.Env = append(os.Environ(), "TELEMESH_DATABASE_URL="+db.URL, "TELEMESH_LOG_FORMAT=json")
		var stdout strings.Builder
		cmd.Stdout = &stdout
		cmd.Stderr = io.Discard
		if err := cmd.Run(); err != nil {
			t.Fatalf("telemesh %s: %v", strings.Join(args, " "), err)
		}
		return stdout.String()
	}
	tables := func() int {
		t.Helper()
		var n int
		err := db.Pool.QueryRow(t.Context(), `select count(*) from pg_tables where schemaname = 'public'
			and tablename in ('organizations','devices','device_telemetry_logs','ingestion_messages','ingestion_stage_logs','pipeline_switches')`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	out := run("migrate", "up")
	if !strings.Contains(out, "applied") {
		t.Fatalf("migrate up printed %q", out)
	}
	if n := tables(); n != 6 {
		t.Fatalf("after up: %d of 6 core tables", n)
	}
	status := run("migrate", "status")
	if strings.Contains(status, "pending") {
		t.Fatalf("status after up lists pending migrations:\n%s", status)
	}
	run("migrate", "down", "--to", "0")
	if n := tables(); n != 0 {
		t.Fatalf("after down to 0: %d core tables remain", n)
	}
	status = run("migrate", "status")
	if strings.Count(status, "pending") != strings.Count(status, "\n")-1 {
		t.Fatalf("status after down lists applied migrations:\n%s", status)
	}
	run("migrate", "up")
	if n := tables(); n != 6 {
		t.Fatalf("after up again: %d of 6 core tables", n)
	}
}

// TestVersion checks the built binary names the commit it was built from,
// with the commit's date, the same way for `version` and `--version`.
// TestMain links them in as the Makefile does.
func TestVersion(t *testing.T) {
	out, err := exec.Command(telemeshBin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "telemesh ") {
		t.Fatalf("version = %q, %v", out, err)
	}
	flag, err := exec.Command(telemeshBin, "--version").Output()
	if err != nil || string(flag) != string(out) {
		t.Errorf("--version = %q, %v; want what version prints, %q", flag, err, out)
	}
	if builtCommit == "" {
		t.Fatal("git rev-parse HEAD gave no commit when the test built telemesh from this work tree")
	}
	if want := "commit   " + builtCommit; !strings.Contains(string(out), want) {
		t.Errorf("version = %q, want a line %q", out, want)
	}
	m := regexp.MustCompile(`(?m)^date     (\S+)$`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("version = %q, want a date line", out)
	}
	if _, err := time.Parse(time.RFC3339, m[1]); err != nil {
		t.Errorf("date %q: %v", m[1], err)
	}
}

// TestVersionFromLinker checks the version the release sets at link time
// (main.version, as the Makefile's LDFLAGS do) is the one printed.
func TestVersionFromLinker(t *testing.T) {
	was := version
	version = "v9.8.7"
	t.Cleanup(func() { version = was })
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, _, err := runCmd(t, nil, args...)
		if err != nil || !strings.HasPrefix(out, "telemesh v9.8.7\n") {
			t.Errorf("%v = %q, %v; want it to start with telemesh v9.8.7", args, out, err)
		}
	}
}
