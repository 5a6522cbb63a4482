package main

import (
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

// TestServeViewer runs `telemesh serve viewer` as its own process: it
// serves the page and its admin port, takes its token from the environment
// without printing it, and stops on SIGTERM.
func TestServeViewer(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	const secret = "s3cret-viewer-token"
	p := startTelemesh(t, []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_NATS_URL=" + ns.URL(), "TELEMESH_VIEWER_TOKEN=" + secret},
		"serve", "viewer", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json", "--shutdown-grace", stopGrace.String())
	var rec map[string]any
	select {
	case rec = <-p.served:
	case err := <-p.done:
		t.Fatalf("exited before serving: %v\n%s", err, p.output())
	case <-time.After(testWait):
		t.Fatalf("not serving after %s:\n%s", testWait, p.output())
	}
	base := "http://" + rec["http"].(string)
	get := func(url string) (int, string) {
		t.Helper()
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get(base + "/"); code != http.StatusOK || !strings.Contains(body, "telemesh viewer") {
		t.Errorf("page: %d\n%s", code, body)
	}
	if code, body := get(base + "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
	if code, body := get(base + "/api/meta"); code != http.StatusOK || !strings.Contains(body, `"read_only":false`) {
		t.Errorf("meta: %d %s", code, body)
	}
	if code, body := get("http://" + rec["admin"].(string) + "/metrics"); code != http.StatusOK || !strings.Contains(body, "telemesh_viewer_live_connections") {
		t.Errorf("admin metrics: %d", code)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/api/auth", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Errorf("the token from TELEMESH_VIEWER_TOKEN: %d, want 204", res.StatusCode)
	}

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
		t.Fatalf("still running %s after SIGTERM:\n%s", testWait, p.output())
	}
	if took := time.Since(start); took > stopGrace {
		t.Errorf("shutdown took %s, longer than the %s grace", took, stopGrace)
	}
	out := p.output()
	if strings.Contains(out, secret) {
		t.Errorf("the viewer token was printed:\n%s", out)
	}
	if !strings.Contains(out, `"viewer-token":"*****"`) || !strings.Contains(out, `"msg":"stopped"`) {
		t.Errorf("no masked viewer-token in the configuration, or no 'stopped' line:\n%s", out)
	}
}

func TestServeViewerSettings(t *testing.T) {
	db := testdb.New(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantLine string
	}{
		{"history out of range", []string{"--history-minutes", "0"}, "invalid setting --history-minutes (TELEMESH_HISTORY_MINUTES)"},
		{"listen without a port", []string{"--listen", "127.0.0.1"}, "invalid setting --listen (TELEMESH_LISTEN)"},
		{"no raw rate", []string{"--raw-rate", "0"}, "invalid setting --raw-rate (TELEMESH_RAW_RATE)"},
		{"no share for a client", []string{"--max-clients-per-address", "0"},
			"invalid setting --max-clients-per-address (TELEMESH_MAX_CLIENTS_PER_ADDRESS): 0: must be at least 1"},
		{"a trusted proxy that is no address", []string{"--trusted-proxies", "10.0.0.0/8,ingress"},
			`invalid setting --trusted-proxies (TELEMESH_TRUSTED_PROXIES): trusted proxy "ingress" is neither an address nor a CIDR`},
		{"a header that is no header", []string{"--client-ip-header", "X Forwarded"},
			"invalid setting --client-ip-header (TELEMESH_CLIENT_IP_HEADER)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), telemeshBin, append([]string{"serve", "viewer"}, tc.args...)...)
			cmd.Env = append(os.Environ(), "TELEMESH_DATABASE_URL="+db.URL)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("err = %v, want exit code 2; output:\n%s", err, out)
			}
			if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], tc.wantLine) {
				t.Fatalf("output %q, want one line containing %q", out, tc.wantLine)
			}
		})
	}

	// --token is --viewer-token, whose variable is TELEMESH_VIEWER_TOKEN.
	root := newRootCmd(env{stdout: io.Discard, stderr: io.Discard, lookupEnv: func(string) (string, bool) { return "", false }})
	for _, path := range [][]string{{"serve", "viewer"}, {"up"}} {
		cmd, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Flags().Parse([]string{"--token", "short"}); err != nil {
			t.Fatalf("%v --token: %v", path, err)
		}
		if got := cmd.Flags().Lookup("viewer-token").Value.String(); got != "short" {
			t.Errorf("%v: --token set viewer-token to %q", path, got)
		}
	}
}
