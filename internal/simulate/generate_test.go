package simulate

import (
	"encoding/json"
	"errors"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/demo"
)

// fixedNow keeps recorded_at out of the comparisons between runs.
func fixedNow() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }

// rule mirrors one parameter definition of the demo seed SQL.
type rule struct {
	key, path          string
	required, critical bool
	min, max           *float64
	integer            bool
	enum               []string
	regex              string
}

func num(v float64) *float64 { return &v }

// demoRules are the parameter definitions internal/demo seeds, per kind.
var demoRules = map[string][]rule{
	Thermostat: {
		{key: "temp_c", path: "temp_c", required: true, critical: true, min: num(-50), max: num(150)},
		{key: "humidity", path: "humidity", min: num(0), max: num(100)},
		{key: "mode", path: "mode", enum: []string{"heat", "cool", "off"}},
	},
	AirQuality: {
		{key: "pm25", path: "pm25", required: true, critical: true, min: num(0), max: num(1000)},
		{key: "co2_ppm", path: "co2", required: true, integer: true, min: num(0), max: num(10000)},
		{key: "firmware", path: "meta.firmware", regex: `^v[0-9]+\.[0-9]+$`},
	},
	EnergyMeter: {
		{key: "power_w", path: "power_w", required: true, critical: true, min: num(0)},
		{key: "voltage_v", path: "voltage_v", required: true, min: num(0), max: num(500)},
		{key: "current_a", path: "current_a", min: num(0)},
	},
}

func lookup(p map[string]any, path string) (any, bool) {
	var cur any = p
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// check returns the keys that fail their rule, the critical ones among
// them, and the optional keys that are absent.
func check(t *testing.T, kind string, p map[string]any) (failed, critical, absent []string) {
	t.Helper()
	for _, r := range demoRules[kind] {
		v, ok := lookup(p, r.path)
		if !ok {
			if r.required {
				failed = append(failed, r.key)
				if r.critical {
					critical = append(critical, r.key)
				}
			} else {
				absent = append(absent, r.key)
			}
			continue
		}
		bad := false
		switch x := v.(type) {
		case float64:
			bad = (r.min != nil && x < *r.min) || (r.max != nil && x > *r.max) || (r.integer && x != math.Trunc(x))
		case string:
			bad = (r.enum != nil && !slices.Contains(r.enum, x)) || (r.regex != "" && !regexp.MustCompile(r.regex).MatchString(x))
		default:
			bad = true
		}
		if bad {
			failed = append(failed, r.key)
			if r.critical {
				critical = append(critical, r.key)
			}
		}
	}
	return failed, critical, absent
}

func oneDevice(kind string, active bool) []Device {
	base := "devices"
	if kind == EnergyMeter {
		base = "energy"
	}
	return []Device{{ExternalID: "d1", Subject: base + ".d1.telemetry", Kind: kind, Active: active}}
}

func TestPayloadsFollowTheDemoRules(t *testing.T) {
	kinds := []string{Thermostat, EnergyMeter, AirQuality}
	tests := []struct {
		name   string
		faults Faults
		want   MessageKind
		// optionalMissing is the optional key that must be absent, "" none.
		optionalMissing func(kind string) string
		critical        bool
		wantSubject     string
		malformed       bool
		active          bool
	}{
		{name: "valid", want: Valid, active: true, wantSubject: "telemetry"},
		{name: "invalid", faults: Faults{Invalid: 100}, want: Invalid, critical: true, active: true, wantSubject: "telemetry"},
		{name: "inactive", faults: Faults{Inactive: 100}, want: Inactive, active: false, wantSubject: "telemetry"},
		{name: "unknown topic", faults: Faults{UnknownTopic: 100}, want: UnknownTopic, active: true, wantSubject: "nosuchtopic"},
		{name: "malformed", faults: Faults{MalformedJSON: 100}, want: MalformedJSON, malformed: true, active: true, wantSubject: "telemetry"},
		{name: "missing inputs", faults: Faults{MissingInputs: 100}, want: MissingInputs, optionalMissing: optionalInput, active: true, wantSubject: "telemetry"},
	}
	for _, tc := range tests {
		for _, kind := range kinds {
			if tc.want == MissingInputs && optionalInput(kind) == "" {
				continue // air quality has no optional derivation input
			}
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				cfg := Config{Devices: oneDevice(kind, tc.active), Faults: tc.faults, MessageIDs: true, Seed: 3, RunID: "run"}
				if err := cfg.Validate(); err != nil {
					t.Fatal(err)
				}
				g := newGenerator(cfg, fixedNow)
				for i := range 50 {
					m, err := g.next()
					if err != nil {
						t.Fatal(err)
					}
					if m.kind != tc.want || m.skipped != noKind {
						t.Fatalf("message %d: kind %v (skipped %v), want %v", i, m.kind, m.skipped, tc.want)
					}
					if !strings.HasSuffix(m.subject, ".d1."+tc.wantSubject) {
						t.Fatalf("subject %q, want suffix .d1.%s", m.subject, tc.wantSubject)
					}
					if m.msgID == "" || !strings.HasPrefix(m.msgID, "run-") {
						t.Fatalf("header id %q, want run-<n>", m.msgID)
					}
					if tc.malformed {
						if json.Valid(m.data) || m.data[0] != '{' {
							t.Fatalf("malformed body %q parses or does not start like an object", m.data)
						}
						continue
					}
					var p map[string]any
					if err := json.Unmarshal(m.data, &p); err != nil {
						t.Fatalf("payload %s: %v", m.data, err)
					}
					if p["message_id"] != m.msgID {
						t.Fatalf("payload message_id %v, header %q", p["message_id"], m.msgID)
					}
					if at, _ := p["recorded_at"].(string); at != "2026-03-01T12:00:00.000Z" {
						t.Fatalf("recorded_at %q", p["recorded_at"])
					}
					if _, err := time.Parse(time.RFC3339, p["recorded_at"].(string)); err != nil {
						t.Fatalf("recorded_at is not RFC 3339: %v", err)
					}
					failed, critical, absent := check(t, kind, p)
					if tc.critical {
						if len(critical) != 1 || critical[0] != criticalParam(kind) || len(failed) != 1 {
							t.Fatalf("invalid payload %s fails %v (critical %v), want only %s", m.data, failed, critical, criticalParam(kind))
						}
					} else if len(failed) > 0 {
						t.Fatalf("payload %s fails %v", m.data, failed)
					}
					wantAbsent := []string(nil)
					if tc.optionalMissing != nil {
						wantAbsent = []string{tc.optionalMissing(kind)}
					}
					if !slices.Equal(absent, wantAbsent) {
						t.Fatalf("payload %s lacks %v, want %v", m.data, absent, wantAbsent)
					}
				}
			})
		}
	}
}

func TestInvalidMixesMissingAndOutOfRange(t *testing.T) {
	for _, kind := range []string{Thermostat, EnergyMeter, AirQuality} {
		g := newGenerator(Config{Devices: oneDevice(kind, true), Faults: Faults{Invalid: 100}, Seed: 9}, fixedNow)
		missing, outOfRange := 0, 0
		for range 200 {
			m, _ := g.next()
			var p map[string]any
			_ = json.Unmarshal(m.data, &p)
			if _, ok := p[criticalParam(kind)]; ok {
				outOfRange++
			} else {
				missing++
			}
		}
		if missing < 50 || outOfRange < 50 {
			t.Errorf("%s: %d missing, %d out of range; want both about half", kind, missing, outOfRange)
		}
	}
}

func TestFaultSelectionIsDeterministicAndProportional(t *testing.T) {
	const draws = 20000
	tests := []struct {
		name   string
		faults Faults
	}{
		{"none", Faults{}},
		{"all invalid", Faults{Invalid: 100}},
		{"all inactive", Faults{Inactive: 100}},
		{"all duplicates", Faults{DuplicateIDs: 100}},
		{"even mix", Faults{Invalid: 10, Inactive: 10, DuplicateIDs: 10, UnknownTopic: 10, MalformedJSON: 10, MissingInputs: 10}},
		{"uneven mix", Faults{Invalid: 2.5, Inactive: 0, DuplicateIDs: 30, UnknownTopic: 0.5, MalformedJSON: 1, MissingInputs: 6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Devices: DemoDevices(0), Faults: tc.faults, Seed: 42}
			a, b := newGenerator(cfg, fixedNow), newGenerator(cfg, fixedNow)
			var got Counts
			for i := range draws {
				ka, kb := a.pick(), b.pick()
				if ka != kb {
					t.Fatalf("draw %d: %v then %v with the same seed", i, ka, kb)
				}
				got[ka]++
			}
			want := map[MessageKind]float64{Valid: 100 - tc.faults.Sum()}
			for _, s := range tc.faults.shares() {
				want[s.kind] = s.pct
			}
			for _, k := range Kinds() {
				pct := float64(got[k]) * 100 / draws
				if want[k] == 0 && got[k] != 0 {
					t.Errorf("%v drawn %d times at 0%%", k, got[k])
				}
				if math.Abs(pct-want[k]) > 1 {
					t.Errorf("%v drawn %.2f%%, want %.2f%%", k, pct, want[k])
				}
			}
		})
	}
}

func TestSameSeedSameMessages(t *testing.T) {
	cfg := Config{Devices: DemoDevices(0), MessageIDs: true, RunID: "r", Seed: 7,
		Faults: Faults{Invalid: 10, Inactive: 10, DuplicateIDs: 10, UnknownTopic: 10, MalformedJSON: 10, MissingInputs: 10}}
	gen := func(seed int64) []message {
		c := cfg
		c.Seed = seed
		g := newGenerator(c, fixedNow)
		var ms []message
		for range 300 {
			m, err := g.next()
			if err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
		}
		return ms
	}
	a, b, other := gen(7), gen(7), gen(8)
	same := func(x, y []message) bool {
		return slices.EqualFunc(x, y, func(m, n message) bool {
			return m.kind == n.kind && m.subject == n.subject && string(m.data) == string(n.data) && m.msgID == n.msgID
		})
	}
	if !same(a, b) {
		t.Error("seed 7 twice gave different messages")
	}
	if same(a, other) {
		t.Error("seeds 7 and 8 gave the same messages")
	}
}

func TestSkippedFaultsBecomeValid(t *testing.T) {
	active := []Device{{ExternalID: "t", Subject: "devices.t.telemetry", Kind: Thermostat, Active: true}}
	aqOnly := []Device{{ExternalID: "a", Subject: "devices.a.telemetry", Kind: AirQuality, Active: true}}
	tests := []struct {
		name    string
		devices []Device
		faults  Faults
		skipped MessageKind
	}{
		{"inactive without an inactive device", active, Faults{Inactive: 100}, Inactive},
		{"missing inputs without a derivable device", aqOnly, Faults{MissingInputs: 100}, MissingInputs},
		{"duplicate with nothing sent", active, Faults{DuplicateIDs: 100}, Duplicate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Devices: tc.devices, Faults: tc.faults, Seed: 1}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			g := newGenerator(cfg, fixedNow)
			m, err := g.next()
			if err != nil {
				t.Fatal(err)
			}
			if m.kind != Valid || m.skipped != tc.skipped {
				t.Fatalf("got %v standing in for %v, want valid for %v", m.kind, m.skipped, tc.skipped)
			}
			if _, _, absent := check(t, tc.devices[0].Kind, mustObject(t, m.data)); len(absent) > 0 {
				t.Fatalf("stand-in lacks %v", absent)
			}
		})
	}
	if notes := (Config{Devices: active, Faults: Faults{Inactive: 5}}).Notes(); len(notes) != 1 || !strings.Contains(notes[0], "inactive") {
		t.Errorf("Notes = %q, want one about inactive devices", notes)
	}
	if notes := (Config{Devices: DemoDevices(0), Faults: Faults{Inactive: 5, MissingInputs: 5}}).Notes(); len(notes) != 0 {
		t.Errorf("Notes for the whole demo fleet = %q, want none", notes)
	}
}

func mustObject(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
	return p
}

func TestDuplicates(t *testing.T) {
	tests := []struct {
		name string
		ids  bool
	}{{"with message ids", true}, {"without message ids", false}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Devices: DemoDevices(0), MessageIDs: tc.ids, RunID: "r", Seed: 5}
			g := newGenerator(cfg, fixedNow)
			sent := map[string]message{}
			for range 10 {
				m, _ := g.next()
				sent[string(m.data)] = m
			}
			g.faults = Faults{DuplicateIDs: 100}.shares()
			for i := 1; i <= 20; i++ {
				d, _ := g.next()
				if d.kind != Duplicate {
					t.Fatalf("kind %v, want duplicate", d.kind)
				}
				orig, ok := sent[string(d.data)]
				if !ok || orig.subject != d.subject {
					t.Fatalf("duplicate %s on %s is not a re-send of an earlier valid message", d.data, d.subject)
				}
				p := mustObject(t, d.data)
				switch {
				case !tc.ids:
					if d.msgID != "" || p["message_id"] != nil {
						t.Fatalf("without ids the duplicate carries header %q, payload %v", d.msgID, p["message_id"])
					}
				case i%2 == 1:
					if d.msgID != orig.msgID || p["message_id"] != orig.msgID {
						t.Fatalf("duplicate %d: header %q payload %v, want both %q", i, d.msgID, p["message_id"], orig.msgID)
					}
				default:
					if d.msgID != "" || p["message_id"] != orig.msgID {
						t.Fatalf("duplicate %d: header %q payload %v, want payload id %q only", i, d.msgID, p["message_id"], orig.msgID)
					}
				}
			}
		})
	}
}

func TestNoMessageIDsMeansNoneAnywhere(t *testing.T) {
	cfg := Config{Devices: DemoDevices(0), Seed: 11,
		Faults: Faults{Invalid: 15, Inactive: 15, DuplicateIDs: 15, UnknownTopic: 15, MalformedJSON: 15, MissingInputs: 15}}
	g := newGenerator(cfg, fixedNow)
	for range 500 {
		m, _ := g.next()
		if m.msgID != "" || strings.Contains(string(m.data), "message_id") {
			t.Fatalf("%v message with ids off: header %q, body %s", m.kind, m.msgID, m.data)
		}
	}
}

func TestWithSuffix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"devices.thermo-01.telemetry", "devices.thermo-01.nosuchtopic"},
		{"energy.main-energy-meter-01.telemetry", "energy.main-energy-meter-01.nosuchtopic"},
		{"plain", "plain.nosuchtopic"},
	}
	for _, tc := range tests {
		if got := withSuffix(tc.in, unknownSuffix); got != tc.want {
			t.Errorf("withSuffix(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Devices: DemoDevices(0), Count: 1}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"fine", func(*Config) {}, ""},
		{"no devices", func(c *Config) { c.Devices = nil }, "no devices"},
		{"unknown kind", func(c *Config) {
			c.Devices = []Device{{ExternalID: "x", Subject: "a.x.t", Kind: "toaster", Active: true}}
		}, "toaster"},
		{"no subject", func(c *Config) { c.Devices = []Device{{ExternalID: "x", Kind: Thermostat, Active: true}} }, "no subject"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "rate"},
		{"NaN rate", func(c *Config) { c.Rate = math.NaN() }, "rate"},
		{"negative count", func(c *Config) { c.Count = -1 }, "count"},
		{"negative duration", func(c *Config) { c.Duration = -time.Second }, "duration"},
		{"share above 100", func(c *Config) { c.Faults.MalformedJSON = 101 }, "malformed_json"},
		{"negative share", func(c *Config) { c.Faults.Invalid = -1 }, "invalid"},
		{"shares above 100", func(c *Config) { c.Faults = Faults{Invalid: 60, DuplicateIDs: 41} }, "add up to 101"},
		{"shares exactly 100", func(c *Config) { c.Faults = Faults{Invalid: 60, DuplicateIDs: 40} }, ""},
		{"only inactive devices", func(c *Config) { c.Devices = []Device{DemoDevices(0)[2]} }, "none of the devices is active"},
		{"only inactive devices, all inactive", func(c *Config) { c.Devices = []Device{DemoDevices(0)[2]}; c.Faults.Inactive = 100 }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrConfig mentioning %q", err, tc.want)
			}
		})
	}
}

func TestDemoDevices(t *testing.T) {
	all := len(demo.Devices)
	for _, tc := range []struct{ n, want int }{{0, all}, {-1, all}, {3, 3}, {all, all}, {all + 1, all}} {
		if got := len(DemoDevices(tc.n)); got != tc.want {
			t.Errorf("DemoDevices(%d) has %d devices, want %d", tc.n, got, tc.want)
		}
	}
	if d := DemoDevices(0)[2]; d.ExternalID != "thermo-03" || d.Active {
		t.Errorf("third demo device %+v, want the inactive thermo-03", d)
	}
}
