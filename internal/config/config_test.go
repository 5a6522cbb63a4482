package config

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func newFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("listen", "127.0.0.1:7071", "")
	fs.String("database-url", "", "")
	fs.Duration("shutdown-grace", 30*time.Second, "")
	MarkSecret(fs, "database-url")
	return fs
}

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		flag    string
		want    string
		wantErr string
	}{
		{name: "default", flag: "listen", want: "127.0.0.1:7071"},
		{name: "env", env: map[string]string{"TELEMESH_LISTEN": ":9000"}, flag: "listen", want: ":9000"},
		{name: "flag wins", args: []string{"--listen", ":1"}, env: map[string]string{"TELEMESH_LISTEN": ":9000"}, flag: "listen", want: ":1"},
		{name: "dash to underscore", env: map[string]string{"TELEMESH_SHUTDOWN_GRACE": "5s"}, flag: "shutdown-grace", want: "5s"},
		{name: "unparsable", env: map[string]string{"TELEMESH_SHUTDOWN_GRACE": "soon"}, wantErr: "invalid setting --shutdown-grace (TELEMESH_SHUTDOWN_GRACE)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFlags()
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := ApplyEnv(fs, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fs.Lookup(tt.flag).Value.String(); got != tt.want {
				t.Errorf("%s = %q, want %q", tt.flag, got, tt.want)
			}
		})
	}
}

func TestPrintMasksSecrets(t *testing.T) {
	fs := newFlags()
	if err := fs.Set("database-url", "postgres://app:hunter2@db:5432/telemesh?password=alsosecret"); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	Print(slog.New(slog.NewTextHandler(&buf, nil)), "config", fs)
	out := buf.String()
	if strings.Contains(out, "hunter2") || strings.Contains(out, "alsosecret") {
		t.Fatalf("secret printed: %s", out)
	}
	if !strings.Contains(out, "app:xxxxx@db:5432") {
		t.Fatalf("masked URL missing: %s", out)
	}
}

func TestMaskURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://tok@127.0.0.1:4222", "nats://xxxxx@127.0.0.1:4222"},
		{"postgres://root@127.0.0.1:5432/telemesh", "postgres://root@127.0.0.1:5432/telemesh"},
		{"nats://u:p@a:4222,nats://u:p@b:4222", "nats://u:xxxxx@a:4222,nats://u:xxxxx@b:4222"},
		{"plain-token", "*****"},
		{"postgres://db/x", "postgres://db/x"},
	}
	for _, tt := range tests {
		if got := MaskURL(tt.in); got != tt.want {
			t.Errorf("MaskURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestChecks(t *testing.T) {
	tests := []struct {
		name string
		err  error
		ok   bool
	}{
		{"listen ok", CheckListenAddr("listen", "127.0.0.1:0"), true},
		{"listen any host", CheckListenAddr("listen", ":7071"), true},
		{"listen port out of range", CheckListenAddr("listen", "127.0.0.1:70000"), false},
		{"listen negative", CheckListenAddr("listen", "127.0.0.1:-1"), false},
		{"listen no port", CheckListenAddr("listen", "localhost"), false},
		{"target ok", CheckTarget("next", "127.0.0.1:7072"), true},
		{"target dns", CheckTarget("next", "dns:///deriver.telemesh.svc:7072"), true},
		{"target port 0", CheckTarget("next", "127.0.0.1:0"), false},
		{"target list", CheckTarget("next", "127.0.0.1:7071,127.0.0.1:7081"), true},
		{"target list with a bad port", CheckTarget("next", "127.0.0.1:7071,127.0.0.1:99999"), false},
		{"target other scheme", CheckTarget("next", "unix:///tmp/x"), false},
		{"one of", CheckOneOf("mode", "all", "all", "failures"), true},
		{"not one of", CheckOneOf("mode", "some", "all", "failures"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", tt.err, tt.ok)
			}
			if tt.err != nil && !errors.Is(tt.err, ErrInvalid) {
				t.Fatalf("err %v does not wrap ErrInvalid", tt.err)
			}
		})
	}
}

// writeSecret writes content to a file of its own and returns its path.
func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSecretFromFile(t *testing.T) {
	const fromFile = "postgres://app:from-file@db:5432/telemesh"
	file := writeSecret(t, fromFile+"\n")
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string
		wantErr string
	}{
		{name: "file flag", args: []string{"--database-url-file", file}, want: fromFile},
		{name: "file from the environment", env: map[string]string{"TELEMESH_DATABASE_URL_FILE": file}, want: fromFile},
		{name: "file flag wins over the environment's value", args: []string{"--database-url-file", file},
			env: map[string]string{"TELEMESH_DATABASE_URL": "postgres://app:from-env@db/telemesh"}, want: fromFile},
		{name: "value flag wins over the environment's file", args: []string{"--database-url", "postgres://app:flag@db/telemesh"},
			env: map[string]string{"TELEMESH_DATABASE_URL_FILE": file}, want: "postgres://app:flag@db/telemesh"},
		{name: "both flags", args: []string{"--database-url", "postgres://db/x", "--database-url-file", file},
			wantErr: "invalid setting --database-url-file (TELEMESH_DATABASE_URL_FILE): give --database-url or --database-url-file, not both"},
		{name: "both variables", env: map[string]string{"TELEMESH_DATABASE_URL": "postgres://db/x", "TELEMESH_DATABASE_URL_FILE": file},
			wantErr: "invalid setting --database-url-file (TELEMESH_DATABASE_URL_FILE): give TELEMESH_DATABASE_URL or TELEMESH_DATABASE_URL_FILE, not both"},
		{name: "missing file", args: []string{"--database-url-file", filepath.Join(t.TempDir(), "nope")},
			wantErr: "invalid setting --database-url-file (TELEMESH_DATABASE_URL_FILE): cannot read"},
		{name: "empty file", args: []string{"--database-url-file", writeSecret(t, "\n")},
			wantErr: "invalid setting --database-url-file (TELEMESH_DATABASE_URL_FILE): the file is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFlags()
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := ApplyEnv(fs, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fs.Lookup("database-url").Value.String(); got != tt.want {
				t.Errorf("database-url = %q, want %q", got, tt.want)
			}
			var buf bytes.Buffer
			Print(slog.New(slog.NewTextHandler(&buf, nil)), "config", fs)
			if strings.Contains(buf.String(), "from-file") || strings.Contains(buf.String(), "from-env") {
				t.Errorf("printed a secret: %s", buf.String())
			}
		})
	}
}

// TestApplyEnvTwice: a command may apply the environment more than once to
// the same flags; the second time must see the sources the first saw.
func TestApplyEnvTwice(t *testing.T) {
	const fromFile = "postgres://app:from-file@db/telemesh"
	file := writeSecret(t, fromFile)
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{name: "file from the environment", env: map[string]string{"TELEMESH_DATABASE_URL_FILE": file}},
		{name: "file flag", args: []string{"--database-url-file", file}},
		{name: "file flag over the environment's value", args: []string{"--database-url-file", file},
			env: map[string]string{"TELEMESH_DATABASE_URL": "postgres://db/other"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFlags()
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			for i := range 2 {
				if err := ApplyEnv(fs, lookup); err != nil {
					t.Fatalf("ApplyEnv #%d: %v", i+1, err)
				}
				if got := fs.Lookup("database-url").Value.String(); got != fromFile {
					t.Fatalf("after ApplyEnv #%d database-url = %q, want %q", i+1, got, fromFile)
				}
			}
		})
	}
}

func TestSecretFlagHelpSaysLastResort(t *testing.T) {
	fs := newFlags()
	usage := fs.Lookup("database-url").Usage
	for _, want := range []string{"last resort", "TELEMESH_DATABASE_URL", "--database-url-file"} {
		if !strings.Contains(usage, want) {
			t.Errorf("usage %q lacks %q", usage, want)
		}
	}
	if f := fs.Lookup("database-url-file"); f == nil || !strings.Contains(f.Usage, "TELEMESH_DATABASE_URL_FILE") {
		t.Errorf("no --database-url-file naming its variable: %+v", f)
	}
}

func TestListVar(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  string
		want []string
	}{
		{name: "default", want: []string{"devices.>"}},
		{name: "flag", args: []string{"--subjects", "a.>, b.> ,,c"}, want: []string{"a.>", "b.>", "c"}},
		{name: "last flag wins", args: []string{"--subjects", "a.>", "--subjects", "b.>"}, want: []string{"b.>"}},
		{name: "env", env: "x.>,y.>", want: []string{"x.>", "y.>"}},
		{name: "empty", args: []string{"--subjects", " , "}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := []string{"devices.>"}
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			ListVar(fs, &got, "subjects", "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			lookup := func(k string) (string, bool) { return tt.env, tt.env != "" && k == "TELEMESH_SUBJECTS" }
			if err := ApplyEnv(fs, lookup); err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
				t.Errorf("subjects %q, want %q", got, tt.want)
			}
			if f := fs.Lookup("subjects"); f.DefValue != "devices.>" || f.Value.Type() != "string" {
				t.Errorf("default %q of type %s, want devices.> of type string", f.DefValue, f.Value.Type())
			}
		})
	}
}
