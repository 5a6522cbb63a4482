package main

import (
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
	if exit, ok := err.(*exec.ExitError); ok {
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
