package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/telemesh/telemesh/internal/roles"
	"github.com/telemesh/telemesh/internal/testdb"
)

// TestRolesListTakesTheDatabaseLikeApply: list and apply take the same
// connection settings (flag, variable, file) and the same role and schema
// settings; with a database, list also says whether the roles there hold
// what it lists.
func TestRolesListTakesTheDatabaseLikeApply(t *testing.T) {
	db := testdb.New(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	o := roles.Options{Prefix: "tml" + hex.EncodeToString(b) + "_"}
	t.Cleanup(func() {
		if err := roles.Drop(context.Background(), db.Pool, o); err != nil {
			t.Errorf("drop roles: %v", err)
		}
	})
	for _, cmd := range []string{"apply", "list"} {
		out, code := runTelemesh(t, nil, "roles", cmd, "--help")
		for _, flag := range []string{"--database-url ", "--database-url-file ", "--role-prefix ", "--schema "} {
			if code != 0 || !strings.Contains(out, flag) {
				t.Errorf("roles %s has no %s flag (exit %d):\n%s", cmd, flag, code, out)
			}
		}
	}

	// Before apply: the roles are missing.
	out, code := runTelemesh(t, nil, "roles", "list", "--database-url", db.URL, "--role-prefix", o.Prefix)
	if code != 0 || !strings.Contains(out, o.RoleName("gateway")+": does not exist") {
		t.Fatalf("list before apply: exit %d\n%s", code, out)
	}
	if out, code := runTelemesh(t, nil, "roles", "apply", "--database-url-file", secretFile(t, db.URL), "--role-prefix", o.Prefix); code != 0 {
		t.Fatalf("apply with --database-url-file: exit %d\n%s", code, out)
	}
	for name, run := range map[string]func() (string, int){
		"flag": func() (string, int) {
			return runTelemesh(t, nil, "roles", "list", "--database-url", db.URL, "--role-prefix", o.Prefix, "--schema", "public")
		},
		"file": func() (string, int) {
			return runTelemesh(t, nil, "roles", "list", "--database-url-file", secretFile(t, db.URL), "--role-prefix", o.Prefix)
		},
		"environment": func() (string, int) {
			return runTelemesh(t, []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_ROLE_PREFIX=" + o.Prefix}, "roles", "list")
		},
	} {
		out, code := run()
		if code != 0 || strings.Count(out, ": as listed") != len(roles.Roles()) {
			t.Errorf("list with the database by %s: exit %d, want every role as listed\n%s", name, code, out)
		}
	}

	opsExec(t, db, `grant delete on devices to `+o.RoleName("validator"))
	out, code = runTelemesh(t, nil, "roles", "list", "--database-url", db.URL, "--role-prefix", o.Prefix)
	if code != 0 || !strings.Contains(out, o.RoleName("validator")+": differs: also DELETE on devices") ||
		!strings.Contains(out, "telemesh roles apply") {
		t.Errorf("list after drift: exit %d\n%s", code, out)
	}

	// Without a database it lists what apply would grant, offline.
	out, code = runTelemesh(t, []string{"TELEMESH_DATABASE_URL=", "TELEMESH_ROLE_PREFIX=" + o.Prefix}, "roles", "list")
	if code != 0 || !strings.Contains(out, o.RoleName("persister")) || strings.Contains(out, "as listed") {
		t.Errorf("list without a database: exit %d\n%s", code, out)
	}
}
