package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/telemesh/telemesh/internal/testdb"
)

// runTelemesh runs the binary and returns its combined output and exit code.
func runTelemesh(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), telemeshBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if exit := (*exec.ExitError)(nil); errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

const goodSchema = `
organization: acme
organization_name: Acme Buildings
device_types:
  - name: thermostat
    base_topic: devices
    topics:
      - suffix: telemetry
        parameters:
          - {key: temp_c, json_path: $.temp_c, type: decimal, required: true, critical: true, rules: {min: -50, max: 150}, mutation: {"+": [{var: val}, 2]}}
          - {key: humidity, json_path: $.humidity, type: decimal, rules: {min: 0, max: 100}}
        derived:
          - {key: temp_f, type: decimal, expression: {"+": [{"*": [{var: temp_c}, 1.8]}, 32]}}
          - {key: feels_like, type: decimal, expression: {"+": [{var: temp_f}, {"*": [{var: humidity}, 0.1]}]}}
`

func TestSchemaApplyAndDevices(t *testing.T) {
	db := testdb.New(t)
	env := []string{"TELEMESH_DATABASE_URL=" + db.URL}
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	count := func(sql string) int {
		var n int
		if err := db.Pool.QueryRow(t.Context(), sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	tests := []struct {
		name     string
		file     string
		wantCode int
		wantOut  string
	}{
		{"a good file is applied", goodSchema, 0, "applied 1 device type(s), 1 topic(s), 2 parameter(s), 2 derived parameter(s) for acme"},
		{"applying it again changes nothing", goodSchema, 0, "applied 1 device type(s)"},
		{"a cycle is refused, naming it", strings.Replace(goodSchema, `{var: temp_c}, 1.8`, `{var: feels_like}, 1.8`, 1), 1, "feels_like -> temp_f -> feels_like"},
		{"an unknown dependency is refused, naming it", strings.Replace(goodSchema, `{var: humidity}, 0.1`, `{var: dew_point}, 0.1`, 1), 1, "dew_point"},
		{"a rule that does not fit the type is refused", strings.Replace(goodSchema, `type: decimal, rules: {min: 0, max: 100}`, `type: string, rules: {min: 0, max: 100}`, 1), 1, "humidity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runTelemesh(t, env, "schema", "apply", write("schema.yaml", tt.file))
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) {
				t.Fatalf("exit %d, output %q; want exit %d containing %q", code, out, tt.wantCode, tt.wantOut)
			}
		})
	}
	if n := count(`select count(*) from derived_parameter_definitions`); n != 2 {
		t.Errorf("%d derived definitions after the refused files, want 2", n)
	}

	steps := []struct {
		args    []string
		wantOut string
	}{
		{[]string{"devices", "add", "thermo-9", "--organization", "acme", "--type", "thermostat"}, "added thermo-9"},
		{[]string{"devices", "list", "--organization", "acme"}, "devices.thermo-9.<topic>"},
		{[]string{"devices", "deactivate", "thermo-9"}, "thermo-9 is now inactive"},
		{[]string{"devices", "activate", "thermo-9"}, "thermo-9 is now active"},
	}
	for _, s := range steps {
		out, code := runTelemesh(t, env, s.args...)
		if code != 0 || !strings.Contains(out, s.wantOut) {
			t.Fatalf("telemesh %s: exit %d, %q; want %q", strings.Join(s.args, " "), code, out, s.wantOut)
		}
	}
	if out, code := runTelemesh(t, env, "devices", "deactivate", "nosuch"); code != 1 || !strings.Contains(out, "not found") {
		t.Errorf("deactivate of an unknown device: exit %d, %q", code, out)
	}
	if n := count(`select count(*) from devices where external_id = 'thermo-9' and is_active`); n != 1 {
		t.Errorf("thermo-9 active rows = %d", n)
	}
}

// TestSchemaApplyRefusesUnknownNames shows that a mutation or a derived
// expression that reads a name the topic does not define is refused by
// apply and by --dry-run, in one line naming the parameter, the expression
// and the name, and that nothing is written.
func TestSchemaApplyRefusesUnknownNames(t *testing.T) {
	db := testdb.New(t)
	env := []string{"TELEMESH_DATABASE_URL=" + db.URL}
	dir := t.TempDir()
	tests := []struct {
		name string
		from string // replaced in goodSchema
		to   string
		want string
	}{
		{"a mutation reading value, not val",
			`mutation: {"+": [{var: val}, 2]}`, `mutation: {"*": [{var: value}, 1.02]}`,
			`thermostat/telemetry: parameter "temp_c": mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined (a mutation reads only "val", the extracted value)`},
		{"a mutation reading another parameter",
			`mutation: {"+": [{var: val}, 2]}`, `mutation: {"+": [{var: val}, {var: humidity}]}`,
			`parameter "temp_c": mutation {"+":[{"var":"val"},{"var":"humidity"}]} reads "humidity", which is not defined`},
		{"a derived expression reading an unknown name",
			`{var: humidity}, 0.1`, `{var: dew_point}, 0.1`,
			`thermostat/telemetry: derived parameter "feels_like": expression {"+":[{"var":"temp_f"},{"*":[{"var":"dew_point"},0.1]}]} reads "dew_point", which is not defined`},
	}
	for _, tt := range tests {
		for _, dryRun := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s (dry run %v)", tt.name, dryRun), func(t *testing.T) {
				body := strings.Replace(goodSchema, tt.from, tt.to, 1)
				if body == goodSchema {
					t.Fatalf("%q is not in the schema", tt.from)
				}
				p := filepath.Join(dir, "schema.yaml")
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"schema", "apply", p}
				if dryRun {
					args = append(args, "--dry-run")
				}
				out, code := runTelemesh(t, env, args...)
				if code != 1 || !strings.Contains(out, tt.want) {
					t.Fatalf("exit %d, output %q; want exit 1 containing %q", code, out, tt.want)
				}
				if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 1 {
					t.Errorf("%d lines of output, want one: %q", lines, out)
				}
				for _, bad := range []string{"interface conversion", "runtime error", "panic"} {
					if strings.Contains(out, bad) {
						t.Errorf("output %q contains %q", out, bad)
					}
				}
			})
		}
	}
	var n int
	if err := db.Pool.QueryRow(t.Context(), `select (select count(*) from parameter_definitions) + (select count(*) from derived_parameter_definitions)`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d definitions written by refused files, want 0", n)
	}

	out, code := runTelemesh(t, env, "schema", "apply", "--help")
	if code != 0 || !strings.Contains(out, `reads only "val"`) {
		t.Errorf("schema apply --help (exit %d) does not say what a mutation may read:\n%s", code, out)
	}
}
