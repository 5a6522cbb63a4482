package charttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// The pipeline as the binary has it (internal/app.NextHops), restated here
// so the chart is checked against the code's topology, not against itself.
var (
	grpcStages = []string{"gateway", "validator", "deriver", "persister", "publisher"}
	allStages  = append(append([]string{}, grpcStages...), "viewer")
	nextHops   = map[string][]string{
		"gateway":   {"validator"},
		"validator": {"deriver", "persister"},
		"deriver":   {"persister"},
		"persister": {"publisher"},
	}
	defaultPorts = map[string][2]int32{
		"gateway":   {7070, 9070},
		"validator": {7071, 9071},
		"deriver":   {7072, 9072},
		"persister": {7073, 9073},
		"publisher": {7074, 9074},
		"viewer":    {8080, 9080},
	}
)

// kubeVersion is the cluster the chart is rendered for. The SDK's default
// (v1.20) is what a helm binary built without version ldflags reports; the
// chart needs 1.30+ (native gRPC probes, the preStop sleep action).
var kubeVersion = &chartutil.KubeVersion{Version: "v1.33.0", Major: "1", Minor: "33"}

const (
	releaseName = "telemesh"
	namespace   = "iot"
)

// repoRoot is the repository root, two levels above this module.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func chartDir(t testing.TB) string {
	return filepath.Join(repoRoot(t), "deploy", "helm", "telemesh")
}

func loadChart(t testing.TB) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir(t))
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

func readValues(t testing.TB, path string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return v.AsMap()
}

// object is one rendered Kubernetes object, decoded strictly into its
// k8s.io/api type (or kept unstructured for CRDs).
type object struct {
	Kind, Name, Namespace string
	APIVersion            string
	Labels                map[string]string
	Annotations           map[string]string
	Hook                  bool
	Source                string // the template it came from
	Raw                   string // its YAML
	Typed                 any
	Unstructured          map[string]any
}

// rendering is the result of a dry-run, client-only install.
type rendering struct {
	Release  *release.Release
	Values   chartutil.Values // the values the templates saw (defaults merged)
	Objects  []*object
	Manifest string // every rendered byte: manifest, hooks and notes
}

// render installs the chart with DryRun and ClientOnly (helm template), which
// validates vals against values.schema.json, and decodes every object.
func render(t testing.TB, vals map[string]any) (*rendering, error) {
	t.Helper()
	return renderAs(t, vals, releaseName, namespace)
}

func renderAs(t testing.TB, vals map[string]any, name, ns string) (*rendering, error) {
	t.Helper()
	c := loadChart(t)
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.DryRun = true
	install.ClientOnly = true
	install.ReleaseName = name
	install.Namespace = ns
	install.KubeVersion = kubeVersion
	install.APIVersions = chartutil.VersionSet{"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"}
	rel, err := install.Run(c, vals)
	if err != nil {
		return nil, err
	}
	coalesced, err := chartutil.CoalesceValues(c, vals)
	if err != nil {
		t.Fatalf("coalesce values: %v", err)
	}
	r := &rendering{Release: rel, Values: coalesced}
	var all strings.Builder
	all.WriteString(rel.Manifest)
	all.WriteString("\n")
	for _, doc := range splitManifest(rel.Manifest) {
		r.Objects = append(r.Objects, decode(t, doc, false))
	}
	for _, h := range rel.Hooks {
		all.WriteString(h.Manifest)
		all.WriteString("\n")
		o := decode(t, h.Manifest, true)
		r.Objects = append(r.Objects, o)
	}
	all.WriteString(rel.Info.Notes)
	r.Manifest = all.String()
	return r, nil
}

func mustRender(t testing.TB, vals map[string]any) *rendering {
	t.Helper()
	r, err := render(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return r
}

var sourceLine = regexp.MustCompile(`(?m)^# Source: (.+)$`)

// splitManifest splits a multi-document manifest into its documents.
func splitManifest(m string) []string {
	var docs []string
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(m, -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}

// strictDecode decodes JSON into out, rejecting any field the type does not
// have: a typo in a template is a test failure, not a silently dropped field.
func strictDecode(data []byte, out any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

// typeFor maps apiVersion/kind to the k8s.io/api type the object must decode
// into.
func typeFor(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "batch/v1/Job":
		return &batchv1.Job{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "networking.k8s.io/v1/Ingress":
		return &networkingv1.Ingress{}, true
	}
	return nil, false
}

func decode(t testing.TB, doc string, hook bool) *object {
	t.Helper()
	src := ""
	if m := sourceLine.FindStringSubmatch(doc); m != nil {
		src = m[1]
	}
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatalf("%s: not YAML: %v\n%s", src, err, doc)
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name        string            `json:"name"`
			Namespace   string            `json:"namespace"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &meta); err != nil {
		t.Fatalf("%s: %v\n%s", src, err, doc)
	}
	o := &object{
		Kind: meta.Kind, APIVersion: meta.APIVersion, Name: meta.Metadata.Name, Namespace: meta.Metadata.Namespace,
		Labels: meta.Metadata.Labels, Annotations: meta.Metadata.Annotations, Hook: hook, Source: src, Raw: doc,
	}
	if typed, ok := typeFor(meta.APIVersion, meta.Kind); ok {
		if err := strictDecode(js, typed); err != nil {
			t.Fatalf("%s %s/%s (%s): strict decode: %v\n%s", meta.APIVersion, meta.Kind, meta.Metadata.Name, src, err, doc)
		}
		o.Typed = typed
		return o
	}
	if meta.APIVersion == "monitoring.coreos.com/v1" && (meta.Kind == "ServiceMonitor" || meta.Kind == "PrometheusRule") ||
		meta.APIVersion == "cert-manager.io/v1" && meta.Kind == "Certificate" {
		if err := json.Unmarshal(js, &o.Unstructured); err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		return o
	}
	t.Fatalf("%s: unexpected object %s %s/%s", src, meta.APIVersion, meta.Kind, meta.Metadata.Name)
	return nil
}

// find returns the object of kind and name, or nil.
func (r *rendering) find(kind, name string) *object {
	for _, o := range r.Objects {
		if o.Kind == kind && o.Name == name {
			return o
		}
	}
	return nil
}

func (r *rendering) all(kind string) []*object {
	var out []*object
	for _, o := range r.Objects {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// stageValues is the part of a stage's values the assertions need.
type stageValues struct {
	Enabled     bool  `json:"enabled"`
	Replicas    int32 `json:"replicas"`
	Port        int32 `json:"port"`
	AdminPort   int32 `json:"adminPort"`
	Autoscaling struct {
		Enabled     bool  `json:"enabled"`
		MinReplicas int32 `json:"minReplicas"`
		MaxReplicas int32 `json:"maxReplicas"`
		Target      int32 `json:"targetCPUUtilizationPercentage"`
	} `json:"autoscaling"`
	PDB struct {
		Enabled bool `json:"enabled"`
	} `json:"pdb"`
	TLSSecret            string `json:"tlsSecret"`
	ShutdownGraceSeconds int64  `json:"shutdownGraceSeconds"`
}

type chartValues struct {
	Stages map[string]stageValues `json:"stages"`
	TLS    struct {
		Enabled     bool   `json:"enabled"`
		TrustDomain string `json:"trustDomain"`
		HealthPort  int32  `json:"healthPort"`
		CertManager struct {
			Enabled   bool              `json:"enabled"`
			IssuerRef map[string]string `json:"issuerRef"`
			Operator  bool              `json:"operator"`
		} `json:"certManager"`
	} `json:"tls"`
	Shutdown struct {
		GraceSeconds        int64 `json:"graceSeconds"`
		PreStopSleepSeconds int64 `json:"preStopSleepSeconds"`
	} `json:"shutdown"`
	SecurityContext struct {
		ReadOnlyRootFilesystem bool `json:"readOnlyRootFilesystem"`
	} `json:"securityContext"`
	NetworkPolicy struct {
		Enabled bool `json:"enabled"`
	} `json:"networkPolicy"`
	ServiceMonitor struct {
		Enabled bool `json:"enabled"`
	} `json:"serviceMonitor"`
	Ingress struct {
		Enabled bool `json:"enabled"`
	} `json:"ingress"`
	Migrations struct {
		Enabled bool `json:"enabled"`
	} `json:"migrations"`
}

func (r *rendering) values(t testing.TB) chartValues {
	t.Helper()
	js, err := json.Marshal(r.Values)
	if err != nil {
		t.Fatal(err)
	}
	var v chartValues
	if err := json.Unmarshal(js, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// secretStrings returns the secret test strings of a values file: every
// line of a string value that contains PLAINTEXT (the marker the test data
// puts into each secret it gives). None may appear in the rendered output.
func secretStrings(vals map[string]any) []string {
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, k := range sortedKeys(v) {
				walk(v[k])
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		case string:
			for _, line := range strings.Split(v, "\n") {
				if strings.Contains(line, "PLAINTEXT") {
					out = append(out, strings.TrimSpace(line))
				}
			}
		}
	}
	walk(vals)
	return out
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
