package main

import (
	"os"
	"strings"
	"testing"

	"github.com/telemesh/telemesh/internal/testdb"
)

// TestDevicesRefuseBadInputInOneLine checks that what Postgres would refuse
// about a device command's arguments is refused first, in one line that
// says what is wrong and what is allowed, with exit code 2: never a
// constraint name or a SQLSTATE.
func TestDevicesRefuseBadInputInOneLine(t *testing.T) {
	db := testdb.New(t)
	env := []string{"TELEMESH_DATABASE_URL=" + db.URL}
	opsOrg(t, db, "acme", "thermo-1")
	opsOrg(t, db, "globex", "meter-1")

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"an id that is taken", []string{"devices", "add", "thermo-1", "--organization", "acme", "--type", "sensor"},
			[]string{`device id "thermo-1" is taken`, "acme", "unique across organizations"}},
		{"an id taken in another organization", []string{"devices", "add", "meter-1", "--organization", "acme", "--type", "sensor"},
			[]string{`device id "meter-1" is taken`, "globex"}},
		{"an id with a dot", []string{"devices", "add", "thermo.2", "--organization", "acme", "--type", "sensor"},
			[]string{`device id "thermo.2"`, "letters, digits"}},
		{"an empty id", []string{"devices", "add", "", "--organization", "acme", "--type", "sensor"},
			[]string{`device id ""`, "1 to 200"}},
		{"an id too long", []string{"devices", "add", strings.Repeat("x", 201), "--organization", "acme", "--type", "sensor"},
			[]string{"1 to 200"}},
		{"an id that is not UTF-8", []string{"devices", "add", "th\xffermo", "--organization", "acme", "--type", "sensor"},
			[]string{"device id", "letters, digits"}},
		{"an unknown organization", []string{"devices", "add", "thermo-2", "--organization", "initech", "--type", "sensor"},
			[]string{`organization "initech" does not exist`, "acme, globex"}},
		{"an organization that is not UTF-8", []string{"devices", "add", "thermo-2", "--organization", "\xff", "--type", "sensor"},
			[]string{"organization", "does not exist", "acme, globex"}},
		{"an unknown type", []string{"devices", "add", "thermo-2", "--organization", "acme", "--type", "boiler"},
			[]string{`device type "boiler" does not exist in organization acme`, "sensor"}},
		{"deactivate an id that is not UTF-8", []string{"devices", "deactivate", "\xff\xfe"},
			[]string{"device id", "letters, digits"}},
		{"list an organization that is not UTF-8", []string{"devices", "list", "--organization", "\xff"},
			[]string{"organization", "does not exist"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runBinary(t, env, tt.args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if code != 2 || len(lines) != 1 || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2 and one line", code, stdout, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(lines[0], w) {
					t.Errorf("%q lacks %q", lines[0], w)
				}
			}
			for _, raw := range []string{"SQLSTATE", "constraint", "ERROR:", "duplicate key"} {
				if strings.Contains(stderr, raw) {
					t.Errorf("%q shows Postgres's own words (%s)", lines[0], raw)
				}
			}
		})
	}
	var n int
	if err := db.Pool.QueryRow(t.Context(), `select count(*) from devices`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d devices after the refused commands (err %v), want the 2 there were", n, err)
	}
}

// TestSchemaApplyRefusesBadNamesInOneLine checks that names the database
// would refuse by a constraint are refused by schema apply, with and without
// --dry-run, in one line naming the rule and writing nothing.
func TestSchemaApplyRefusesBadNamesInOneLine(t *testing.T) {
	db := testdb.New(t)
	env := []string{"TELEMESH_DATABASE_URL=" + db.URL}
	file := func(org, typeName, base, suffix string) string {
		return "organization: " + org + "\ndevice_types:\n  - name: " + typeName + "\n    base_topic: " + base +
			"\n    topics:\n      - suffix: " + suffix + "\n        parameters:\n          - {key: t, json_path: $.t, type: decimal}\n"
	}
	tests := []struct {
		name, file string
		want       []string
	}{
		{"an organization with a space", file(`"Acme Co"`, "thermostat", "devices", "telemetry"), []string{`organization "Acme Co"`, "lower-case letters"}},
		{"a base topic with a dot", file("acme", "thermostat", "dev.ices", "telemetry"), []string{`device type "thermostat"`, `base topic "dev.ices"`, "no dots"}},
		{"a topic with a dot", file("acme", "thermostat", "devices", "tele.metry"), []string{`device type "thermostat"`, `topic "tele.metry"`, "no dots"}},
		{"a blank device type name", file("acme", `" "`, "devices", "telemetry"), []string{`device type name " "`, "non-blank"}},
	}
	for _, tt := range tests {
		for _, dry := range []bool{false, true} {
			t.Run(tt.name+map[bool]string{true: " dry run"}[dry], func(t *testing.T) {
				path := t.TempDir() + "/schema.yaml"
				if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"schema", "apply", path}
				if dry {
					args = append(args, "--dry-run")
				}
				stdout, stderr, code := runBinary(t, env, args...)
				lines := strings.Split(strings.TrimSpace(stderr), "\n")
				if code != 1 || len(lines) != 1 || stdout != "" {
					t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and one line", code, stdout, stderr)
				}
				for _, w := range append(tt.want, "invalid schema") {
					if !strings.Contains(lines[0], w) {
						t.Errorf("%q lacks %q", lines[0], w)
					}
				}
				if strings.Contains(stderr, "SQLSTATE") || strings.Contains(stderr, "constraint") {
					t.Errorf("%q shows Postgres's own words", lines[0])
				}
			})
		}
	}
	var n int
	if err := db.Pool.QueryRow(t.Context(), `select count(*) from device_types`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d device types after the refused files (err %v), want none", n, err)
	}
}
