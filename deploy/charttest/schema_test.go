package charttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
	"sigs.k8s.io/yaml"
)

func parse(t *testing.T, doc string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("test values: %v", err)
	}
	return m
}

// values.schema.json rejects what it should; Helm applies it on every
// render, so a bad value never reaches the templates.
func TestSchemaRejectsBadValues(t *testing.T) {
	cases := []struct {
		name, values, wantErr string
	}{
		{"replicas of the wrong type", `stages: {gateway: {replicas: "two"}}`, "replicas"},
		{"port of the wrong type", `stages: {validator: {port: "7071"}}`, "port"},
		{"port out of range", `stages: {deriver: {port: 70000}}`, "port"},
		{"enabled not a boolean", `tls: {enabled: "yes"}`, "enabled"},
		{"unknown top-level key", `replicaCount: 3`, "replicaCount"},
		{"unknown stage", `stages: {router: {enabled: true}}`, "router"},
		{"misspelt stage setting", `stages: {persister: {replica: 3}}`, "replica"},
		{"misspelt autoscaling setting", `stages: {publisher: {autoscaling: {maxReplica: 3}}}`, "maxReplica"},
		{"secret in the ConfigMap settings", `config: {database-url: "postgres://x"}`, "database-url"},
		{"next-hop address in the settings", `stages: {gateway: {config: {validator-addr: "x:1"}}}`, "validator-addr"},
		{"settings key not a flag name", `config: {LOG_LEVEL: debug}`, "LOG_LEVEL"},
		{"secret reference with an unknown field", `database: {url: {secretName: x}}`, "secretName"},
		{"PDB bound neither a number nor a percentage", `stages: {gateway: {pdb: {maxUnavailable: half}}}`, "maxUnavailable"},
		{"CPU target above 100", `stages: {gateway: {autoscaling: {targetCPUUtilizationPercentage: 150}}}`, "targetCPUUtilizationPercentage"},
		{"bad pull policy", `image: {pullPolicy: Sometimes}`, "pullPolicy"},
		{"env entry without a name", `env: [{value: x}]`, "name"},
		{"a trust domain with a slash", `tls: {trustDomain: "Tele/mesh"}`, "trustDomain"},
		{"an issuer without a name", `tls: {certManager: {enabled: true, issuerRef: {name: "", kind: Issuer}}}`, "name"},
		{"a certificate duration in days", `tls: {certManager: {enabled: true, duration: 90d}}`, "duration"},
		{"the trust domain as a stage setting", `stages: {gateway: {config: {tls-trust-domain: x}}}`, "tls-trust-domain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, parse(t, tc.values))
			if err == nil {
				t.Fatalf("values %s rendered; the schema should reject them", tc.values)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error does not name the schema and %q: %v", tc.wantErr, err)
			}
		})
	}
}

// Every value set of testdata/ and values-dev.yaml pass the schema on its
// own (ValidateAgainstSchema on the merged values, as helm install does).
func TestSchemaAcceptsValueSets(t *testing.T) {
	c := loadChart(t)
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no value sets in testdata: %v", err)
	}
	files = append(files, filepath.Join(chartDir(t), "values-dev.yaml"))
	for _, f := range files {
		merged, err := chartutil.CoalesceValues(c, readValues(t, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := chartutil.ValidateAgainstSchema(c, merged); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// What the schema cannot say, the templates check with a clear message.
func TestTemplateRejectsInconsistentValues(t *testing.T) {
	cases := []struct {
		name, values, wantErr string
	}{
		{"a stage whose next hop is disabled", `stages: {deriver: {enabled: false}}`, "stages.validator is enabled but calls stages.deriver, which is disabled"},
		{"ingress without the viewer", `ingress: {enabled: true}`, "set stages.viewer.enabled"},
		{"HPA minimum above its maximum", `stages: {validator: {autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}}}`, "minReplicas 5 exceeds maxReplicas 2"},
		{"HPA without a CPU request", `stages: {deriver: {autoscaling: {enabled: true}, resources: {requests: {cpu: null}}}}`, "needs resources.requests.cpu"},
		{"no database URL at all", `database: {url: {existingSecret: ""}}`, "needs a Postgres URL"},
		{"one certificate for every stage", `tls: {enabled: true, existingSecret: telemesh-tls}`, "each stage has a certificate of its own"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, parse(t, tc.values))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("want an error containing %q, got %v", tc.wantErr, err)
			}
		})
	}
}

// helm lint --strict, through the SDK's lint action: no error, no warning,
// with the defaults and with every value set.
func TestHelmLintStrict(t *testing.T) {
	sets := []string{""}
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	sets = append(sets, files...)
	sets = append(sets, filepath.Join(chartDir(t), "values-dev.yaml"))
	for _, f := range sets {
		name := "defaults"
		if f != "" {
			name = filepath.Base(f)
		}
		t.Run(name, func(t *testing.T) {
			vals := map[string]any{}
			if f != "" {
				vals = readValues(t, f)
			}
			lint := action.NewLint()
			lint.Strict = true
			lint.Namespace = namespace
			lint.KubeVersion = kubeVersion
			res := lint.Run([]string{chartDir(t)}, vals)
			if res.TotalChartsLinted != 1 {
				t.Errorf("linted %d charts, want 1", res.TotalChartsLinted)
			}
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("lint: %v", m)
				} else {
					t.Logf("lint: %v", m)
				}
			}
			for _, err := range res.Errors {
				t.Errorf("lint error: %v", err)
			}
			if action.HasWarningsOrErrors(res) {
				t.Errorf("helm lint --strict fails")
			}
		})
	}
}

// The chart's files are where the README and the Tiltfile say.
func TestChartLayout(t *testing.T) {
	for _, f := range []string{
		"Chart.yaml", "values.yaml", "values.schema.json", "values-dev.yaml",
		"templates/stages.yaml", "templates/job-migrate.yaml", "templates/NOTES.txt",
	} {
		if _, err := os.Stat(filepath.Join(chartDir(t), f)); err != nil {
			t.Error(err)
		}
	}
	c := loadChart(t)
	if c.Metadata.APIVersion != "v2" {
		t.Errorf("Chart.yaml apiVersion %q, want v2", c.Metadata.APIVersion)
	}
	if len(c.Metadata.Dependencies) != 0 {
		t.Errorf("the chart bundles %d dependencies; it bundles neither NATS nor Postgres", len(c.Metadata.Dependencies))
	}
	// One template ranges over the stages: no per-stage Deployment files.
	deployments := 0
	for _, tpl := range c.Templates {
		if strings.Contains(string(tpl.Data), "kind: Deployment") {
			deployments++
		}
	}
	if deployments != 1 {
		t.Errorf("%d templates render a Deployment, want 1", deployments)
	}
}
