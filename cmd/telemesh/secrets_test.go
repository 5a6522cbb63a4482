package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

// httpGet returns the status and body of a GET of url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b)
}

// secretFile writes a secret to a file readable by its owner only and
// returns the path.
func secretFile(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	// A trailing newline, as `echo` and most secret stores leave one.
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAdminPortServesNoCommandLine starts a stage and the viewer with their
// secrets on the command line (the last resort) and asks their admin ports
// for pprof: nothing of it without --pprof, and never the command line.
func TestAdminPortServesNoCommandLine(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	withPassword := strings.Replace(db.URL, "postgres@", "postgres:"+dbPassword+"@", 1)
	if withPassword == db.URL {
		t.Fatalf("cannot put a password into %s", db.URL)
	}
	stage := []string{"serve", "deriver", "--listen", "127.0.0.1:0", "--database-url", withPassword}
	viewer := []string{"serve", "viewer", "--listen", "127.0.0.1:0", "--database-url", withPassword,
		"--nats-url", ns.URL(), "--viewer-token", viewerToken}
	tests := []struct {
		name  string
		args  []string
		pprof bool
	}{
		{"stage", stage, false},
		{"stage with --pprof", append(stage[:len(stage):len(stage)], "--pprof"), true},
		{"viewer", viewer, false},
		{"viewer with --pprof", append(viewer[:len(viewer):len(viewer)], "--pprof"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append(tt.args, "--admin-listen", "127.0.0.1:0", "--log-format", "json", "--shutdown-grace", "5s")
			p := startCaptured(t, nil, args...)
			base := "http://" + p.waitLog(t, "serving")["admin"].(string)

			code, body := httpGet(t, base+"/debug/pprof/cmdline")
			if code != http.StatusNotFound || strings.Contains(body, dbPassword) || strings.Contains(body, viewerToken) {
				t.Errorf("GET /debug/pprof/cmdline = %d %.200q, want 404 without the command line", code, body)
			}
			wantIndex := http.StatusNotFound
			if tt.pprof {
				wantIndex = http.StatusOK
			}
			if code, body := httpGet(t, base+"/debug/pprof/"); code != wantIndex || (tt.pprof && !strings.Contains(body, "goroutine")) {
				t.Errorf("GET /debug/pprof/ = %d %.100q, want %d", code, body, wantIndex)
			}
			if code, body := httpGet(t, base+"/debug/pprof/goroutine?debug=1"); code != wantIndex {
				t.Errorf("GET /debug/pprof/goroutine = %d %.100q, want %d", code, body, wantIndex)
			}
			if code, _ := httpGet(t, base+"/metrics"); code != http.StatusOK {
				t.Errorf("GET /metrics = %d, want 200", code)
			}
			p.stop(t)
		})
	}
}

// TestSecretsFromFiles gives every secret by file and checks that the
// process works with them and that none appears in the printed
// configuration, the logs or /metrics.
func TestSecretsFromFiles(t *testing.T) {
	checkClean := func(t *testing.T, what, out string) {
		t.Helper()
		for _, s := range []string{dbPassword, natsServerPass, viewerToken} {
			if strings.Contains(out, s) {
				t.Errorf("%s shows the secret %q:\n%s", what, s, out)
			}
		}
	}
	db := testdb.New(t)
	ns := testnats.NewWith(t, func(o *server.Options) { o.Username, o.Password = "gateway", natsServerPass })
	dbFile := secretFile(t, strings.Replace(db.URL, "postgres@", "postgres:"+dbPassword+"@", 1))
	natsFile := secretFile(t, natsServerPass)

	t.Run("gateway", func(t *testing.T) {
		p := startCaptured(t, []string{"TELEMESH_NATS_PASSWORD_FILE=" + natsFile},
			"serve", "gateway", "--database-url-file", dbFile, "--nats-url", ns.URL(), "--nats-user", "gateway",
			"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug", "--shutdown-grace", "5s")
		cfg := p.waitLog(t, "configuration")
		if cfg["database-url-file"] != dbFile || cfg["nats-password-file"] != natsFile ||
			!strings.Contains(cfg["database-url"].(string), "postgres:xxxxx@") || cfg["nats-password"] != "*****" {
			t.Errorf("configuration printed as %v", cfg)
		}
		base := "http://" + p.waitLog(t, "serving")["admin"].(string)
		// Ready means Postgres and NATS took the secrets from the files.
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body := httpGet(t, base+"/readyz")
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not ready within 30s: %d %s\n%s", code, body, p.stderr)
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, metrics := httpGet(t, base+"/metrics")
		checkClean(t, "/metrics", metrics)
		p.stop(t)
		checkClean(t, "stdout", p.stdout.String())
		checkClean(t, "stderr", p.stderr.String())
	})

	t.Run("operator command", func(t *testing.T) {
		// replay applies the environment twice; the file must still count
		// as one source.
		out, code := runTelemesh(t, []string{"TELEMESH_DATABASE_URL_FILE=" + dbFile}, "replay", "publish-failed", "--dry-run")
		if code != 0 {
			t.Errorf("replay with TELEMESH_DATABASE_URL_FILE: exit %d\n%s", code, out)
		}
		checkClean(t, "replay's output", out)
		out, code = runTelemesh(t, nil, "replay", "publish-failed", "--dry-run", "--database-url-file", dbFile, "--database-url", db.URL)
		want := "telemesh: invalid setting --database-url-file (TELEMESH_DATABASE_URL_FILE): give --database-url or --database-url-file, not both\n"
		if code != 2 || out != want {
			t.Errorf("both the flag and its file: exit %d %q, want 2 %q", code, out, want)
		}
	})

	t.Run("viewer", func(t *testing.T) {
		plain := testnats.New(t)
		p := startCaptured(t, []string{"TELEMESH_DATABASE_URL_FILE=" + dbFile},
			"serve", "viewer", "--viewer-token-file", secretFile(t, viewerToken), "--nats-url", plain.URL(),
			"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json", "--shutdown-grace", "5s")
		cfg := p.waitLog(t, "configuration")
		if cfg["viewer-token"] != "*****" {
			t.Errorf("configuration printed as %v", cfg)
		}
		rec := p.waitLog(t, "serving")
		if rec["read_only"] != false {
			t.Errorf("the viewer is read-only with a token file: %v", rec)
		}
		auth := func(token string) int {
			t.Helper()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+rec["http"].(string)+"/api/auth", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			return res.StatusCode
		}
		if code := auth(viewerToken); code != http.StatusNoContent {
			t.Errorf("the token of the file: %d, want 204", code)
		}
		if code := auth(viewerToken + "x"); code != http.StatusUnauthorized {
			t.Errorf("another token: %d, want 401", code)
		}
		_, metrics := httpGet(t, "http://"+rec["admin"].(string)+"/metrics")
		checkClean(t, "/metrics", metrics)
		p.stop(t)
		checkClean(t, "stdout", p.stdout.String())
		checkClean(t, "stderr", p.stderr.String())
	})
}

// TestSecretFlagsSayLastResort: every flag that takes a secret says in its
// help that it is the last resort and names the variable and the file that
// keep the secret off the command line.
func TestSecretFlagsSayLastResort(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "gateway", "--help"}, {"serve", "viewer", "--help"}, {"up", "--help"},
		{"roles", "apply", "--help"}, {"roles", "list", "--help"}, {"trace", "--help"}, {"status", "--help"},
	} {
		out, code := runTelemesh(t, nil, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		for _, flag := range []string{"database-url", "viewer-token", "nats-password", "nats-token", "migrator-password"} {
			line := helpLine(out, "--"+flag+" ")
			if line == "" {
				continue
			}
			env := "TELEMESH_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
			if !strings.Contains(line, "last resort") || !strings.Contains(line, env) || !strings.Contains(line, "--"+flag+"-file") {
				t.Errorf("%v: --%s's help does not point to %s or --%s-file as better than the flag:\n%s", args, flag, env, flag, line)
			}
			if helpLine(out, "--"+flag+"-file ") == "" {
				t.Errorf("%v: no --%s-file", args, flag)
			}
		}
	}
}

// helpLine returns the line of a command's flag list that describes flag.
func helpLine(help, flag string) string {
	for _, l := range strings.Split(help, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, flag) || strings.Contains(l, ", "+flag) {
			return l
		}
	}
	return ""
}
