package main

import (
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
)

// chartDir is the Helm chart, which runs `telemesh serve <stage>` with its
// settings in TELEMESH_* variables.
var chartDir = filepath.Join("..", "..", "deploy", "helm", "telemesh")

// serveFlags returns the flags of `telemesh serve <name>` for every stage
// and the viewer.
func serveFlags(t *testing.T) map[string]*pflag.FlagSet {
	t.Helper()
	e := env{stdout: io.Discard, stderr: io.Discard, lookupEnv: func(string) (string, bool) { return "", false }}
	out := map[string]*pflag.FlagSet{}
	for _, c := range newServeCmd(e).Commands() {
		out[c.Name()] = c.Flags()
	}
	if len(out) != len(app.Stages)+1 {
		t.Fatalf("serve has commands %v, want every stage and the viewer", slices.Sorted(maps.Keys(out)))
	}
	return out
}

// chartValues is the part of a values file that becomes settings.
type chartValues struct {
	Config map[string]any `yaml:"config"`
	Stages map[string]struct {
		Config    map[string]any `yaml:"config"`
		ExtraArgs []string       `yaml:"extraArgs"`
	} `yaml:"stages"`
}

// TestChartSettingsAreFlags holds the chart's values files (its defaults,
// values-dev.yaml and the chart tests' value sets) to the flags each stage
// registers: every setting a stage is given, in its config or its
// extraArgs, is one of that stage's flags, and every global setting is a
// flag of some stage, so the TELEMESH_* variable the chart makes of it is
// read.
func TestChartSettingsAreFlags(t *testing.T) {
	flags := serveFlags(t)
	files := []string{filepath.Join(chartDir, "values.yaml"), filepath.Join(chartDir, "values-dev.yaml")}
	sets, err := filepath.Glob(filepath.Join("..", "..", "deploy", "charttest", "testdata", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range append(files, sets...) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var v chartValues
			if err := yaml.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			for key := range v.Config {
				if !slices.ContainsFunc(slices.Collect(maps.Values(flags)), func(fs *pflag.FlagSet) bool { return fs.Lookup(key) != nil }) {
					t.Errorf("config.%s is a flag of no stage: %s is read by none", key, config.EnvName(key))
				}
			}
			for stage, s := range v.Stages {
				fs := flags[stage]
				if fs == nil {
					t.Errorf("stages.%s: serve has no such command", stage)
					continue
				}
				for key := range s.Config {
					if fs.Lookup(key) == nil {
						t.Errorf("stages.%s.config.%s is not a flag of serve %s", stage, key, stage)
					}
				}
				for _, arg := range s.ExtraArgs {
					name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
					if fs.Lookup(name) == nil {
						t.Errorf("stages.%s.extraArgs %q is not a flag of serve %s", stage, arg, stage)
					}
				}
			}
		})
	}
}

// TestChartVariablesAreFlags holds the templates to the flags: each
// TELEMESH_* variable they set is read by a stage, and the topology they
// keep (which stages each stage calls, which use NATS) is the one the
// binary has, so every --<stage>-addr and NATS variable goes where it is
// read.
func TestChartVariablesAreFlags(t *testing.T) {
	flags := serveFlags(t)
	templates, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for _, f := range templates {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text.Write(b)
	}
	read := map[string]bool{}
	for _, fs := range flags {
		fs.VisitAll(func(f *pflag.Flag) { read[config.EnvName(f.Name)] = true })
	}
	// The migration Job runs `telemesh migrate up`.
	e := env{stdout: io.Discard, stderr: io.Discard, lookupEnv: func(string) (string, bool) { return "", false }}
	newMigrateCmd(e).Flags().VisitAll(func(f *pflag.Flag) { read[config.EnvName(f.Name)] = true })
	for _, name := range regexp.MustCompile(`TELEMESH_[A-Z0-9_]+`).FindAllString(text.String(), -1) {
		if strings.HasSuffix(name, "_") {
			continue // a printf pattern, checked below
		}
		if !read[name] {
			t.Errorf("the chart sets %s, which no stage reads", name)
		}
	}

	m := regexp.MustCompile(`(?s)define "telemesh.topology" -}}\n(.*?){{- end -}}`).FindStringSubmatch(text.String())
	if m == nil {
		t.Fatal("the templates keep no telemesh.topology")
	}
	var topology map[string]struct {
		Calls []string `yaml:"calls"`
		NATS  bool     `yaml:"nats"`
	}
	if err := yaml.Unmarshal([]byte(m[1]), &topology); err != nil {
		t.Fatal(err)
	}
	for _, stage := range app.Stages {
		got := topology[stage]
		if !slices.Equal(got.Calls, app.NextHops[stage]) {
			t.Errorf("the chart has %s call %v, the binary %v", stage, got.Calls, app.NextHops[stage])
		}
		if got.NATS != app.UsesNATS(stage) {
			t.Errorf("the chart has %s use NATS: %v, the binary: %v", stage, got.NATS, app.UsesNATS(stage))
		}
		for _, next := range got.Calls {
			if flags[stage].Lookup(next+"-addr") == nil {
				t.Errorf("serve %s has no --%s-addr for the chart's %s", stage, next, config.EnvName(next+"-addr"))
			}
		}
		if got.NATS && flags[stage].Lookup("nats-url") == nil {
			t.Errorf("serve %s has no --nats-url", stage)
		}
	}
}
