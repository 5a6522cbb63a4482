package charttest

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// servedMetrics returns the metric names a test mesh serves, as
// internal/app's TestDomainMetrics scraped them.
func servedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "metric-names.txt"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, n := range strings.Fields(string(b)) {
		names[n] = true
	}
	return names
}

// metricNames returns the metric names a PromQL expression selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	// Grafana's interval variables are not PromQL; any duration stands in.
	e, err := parser.NewParser(parser.Options{}).ParseExpr(strings.ReplaceAll(expr, "$__rate_interval", "5m"))
	if err != nil {
		t.Errorf("%q: %v", expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// runbookAnchors returns the anchors of docs/runbook.md's sections.
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	nonWord := regexp.MustCompile(`[^a-z0-9 -]`)
	for _, l := range strings.Split(string(b), "\n") {
		if h, ok := strings.CutPrefix(l, "## "); ok {
			anchors[strings.ReplaceAll(nonWord.ReplaceAllString(strings.ToLower(h), ""), " ", "-")] = true
		}
	}
	return anchors
}

// TestMonitoring renders the dashboard and the alert rules and checks them
// offline: the rules parse with Prometheus's own rule parser, each alert
// names a `telemesh doctor` branch and a runbook step that exists, the
// dashboard is valid JSON, and every metric either uses is one a test mesh
// serves.
func TestMonitoring(t *testing.T) {
	vals := readValues(t, filepath.Join("testdata", "defaults.yaml"))
	vals["monitoring"] = map[string]any{
		"dashboard":      map[string]any{"enabled": true},
		"prometheusRule": map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus"}},
	}
	r := mustRender(t, vals)
	served := servedMetrics(t)
	checkNames := func(where, expr string) {
		for _, n := range metricNames(t, expr) {
			if !served[n] {
				t.Errorf("%s uses %s, which no stage of a test mesh serves (deploy/charttest/testdata/metric-names.txt)", where, n)
			}
		}
	}

	rule := r.find("PrometheusRule", releaseName)
	if rule == nil {
		t.Fatal("no PrometheusRule rendered")
	}
	if rule.Labels["release"] != "kube-prometheus" {
		t.Errorf("PrometheusRule labels %v lack monitoring.prometheusRule.labels", rule.Labels)
	}
	spec, err := yaml.Marshal(rule.Unstructured["spec"])
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("rules: %v", err)
	}
	if groups == nil {
		t.Fatal("no rule groups parsed")
	}
	anchors := runbookAnchors(t)
	alerts := 0
	for _, g := range groups.Groups {
		for _, rl := range g.Rules {
			if rl.Alert == "" {
				continue
			}
			alerts++
			checkNames("alert "+rl.Alert, rl.Expr)
			if rl.Annotations["doctor_branch"] == "" || rl.Annotations["summary"] == "" {
				t.Errorf("alert %s: annotations %v, want a summary and the doctor_branch", rl.Alert, rl.Annotations)
			}
			anchor, ok := strings.CutPrefix(rl.Annotations["runbook"], "docs/runbook.md#")
			if !ok || !anchors[anchor] {
				t.Errorf("alert %s: runbook %q is not a step of docs/runbook.md (%v)", rl.Alert, rl.Annotations["runbook"], anchors)
			}
			if rl.Labels["severity"] == "" {
				t.Errorf("alert %s has no severity", rl.Alert)
			}
		}
	}
	if alerts < 5 {
		t.Errorf("%d alerts, want the runbook's", alerts)
	}

	cmObj := r.find("ConfigMap", releaseName+"-dashboard")
	if cmObj == nil {
		t.Fatal("no dashboard ConfigMap rendered")
	}
	cm := cmObj.Typed.(*corev1.ConfigMap)
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v, want grafana_dashboard=1 for the Grafana sidecar", cm.Labels)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(cm.Data["telemesh.json"]), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard %q (uid %q) with %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkNames("panel "+p.Title, tg.Expr)
		}
	}

	// Off by default: the CRD may not exist, and a dashboard is the
	// operator's choice.
	plain := mustRender(t, readValues(t, filepath.Join("testdata", "defaults.yaml")))
	if plain.find("PrometheusRule", releaseName) != nil || plain.find("ConfigMap", releaseName+"-dashboard") != nil {
		t.Error("monitoring objects rendered with monitoring off")
	}
}
