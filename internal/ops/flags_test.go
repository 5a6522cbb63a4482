package ops

import (
	"context"
	"errors"
	"testing"

	"github.com/telemesh/telemesh/internal/testdb"
)

func TestSwitches(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ctx := context.Background()
	f.org("acme")
	f.org("globex")
	on := Switches{true, true, true}

	steps := []struct {
		name      string
		org, sw   string
		on        bool
		getOrg    string
		wantRows  int
		wantLast  Switches
		wantEff   Switches
		wantGlobl Switches
	}{
		{"org off", "acme", "pipeline.enabled", false, "", 2,
			Switches{false, true, true}, Switches{false, true, true}, on},
		{"global analytics off", "", "publish_analytics", false, "", 2,
			Switches{false, true, true}, Switches{false, false, true}, Switches{true, false, true}},
		{"org back on", "acme", "pipeline.enabled", true, "acme", 2,
			on, Switches{true, false, true}, Switches{true, false, true}},
		{"organization without a row", "", "publish_analytics", true, "globex", 2, on, on, on},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := SetSwitch(ctx, db.Pool, s.org, s.sw, s.on, "tester"); err != nil {
				t.Fatal(err)
			}
			rows, err := GetSwitches(ctx, db.Pool, s.getOrg)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != s.wantRows {
				t.Fatalf("%d rows %+v, want %d", len(rows), rows, s.wantRows)
			}
			g, last := rows[0], rows[len(rows)-1]
			if g.OrganizationID != nil || g.Switches != s.wantGlobl {
				t.Errorf("global %+v, want %+v", g, s.wantGlobl)
			}
			if last.Switches != s.wantLast || last.Effective != s.wantEff {
				t.Errorf("organization %+v, want %+v effective %+v", last, s.wantLast, s.wantEff)
			}
		})
	}
	var by string
	if err := db.Pool.QueryRow(ctx, `select updated_by from pipeline_switches where organization_id is null`).Scan(&by); err != nil || by != "tester" {
		t.Errorf("updated_by %q, %v", by, err)
	}
	if err := SetSwitch(ctx, db.Pool, "nope", "pipeline.enabled", true, "tester"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown organization: %v", err)
	}
	if err := SetSwitch(ctx, db.Pool, "", "nope", true, "tester"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown switch: %v", err)
	}
}
