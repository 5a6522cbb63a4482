package charttest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// call is one recorded call of a stubbed Tilt builtin.
type call struct {
	fn     string
	args   []any
	kwargs map[string]any
}

func (c call) arg(i int, kw string) any {
	if v, ok := c.kwargs[kw]; ok {
		return v
	}
	if i >= 0 && i < len(c.args) {
		return c.args[i]
	}
	return nil
}

// strings returns a string-or-list argument as a list.
func (c call) strings(i int, kw string) []string {
	switch v := c.arg(i, kw).(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func (c call) str(i int, kw string) string {
	s, _ := c.arg(i, kw).(string)
	return s
}

// toGo converts a Starlark value into plain Go values.
func toGo(v starlark.Value) any {
	switch v := v.(type) {
	case starlark.NoneType:
		return nil
	case starlark.String:
		return string(v)
	case starlark.Bool:
		return bool(v)
	case starlark.Int:
		n, _ := v.Int64()
		return n
	case *starlark.List:
		out := make([]any, v.Len())
		for i := range v.Len() {
			out[i] = toGo(v.Index(i))
		}
		return out
	case starlark.Tuple:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = toGo(e)
		}
		return out
	case *starlark.Dict:
		out := map[string]any{}
		for _, k := range v.Keys() {
			val, _, _ := v.Get(k)
			out[fmt.Sprint(toGo(k))] = toGo(val)
		}
		return out
	case *starlarkstruct.Struct:
		out := map[string]any{"_kind": toGo(v.Constructor())}
		d := starlark.StringDict{}
		v.ToStringDict(d)
		for k, e := range d {
			out[k] = toGo(e)
		}
		return out
	}
	return v.String()
}

// tilt runs a Tiltfile with Tilt's builtins stubbed, recording every call.
type tilt struct {
	calls []call
}

func (tl *tilt) stub(name string, result func(c call) starlark.Value) *starlark.Builtin {
	return starlark.NewBuiltin(name, func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
		c := call{fn: name, kwargs: map[string]any{}}
		for _, a := range args {
			c.args = append(c.args, toGo(a))
		}
		for _, kv := range kwargs {
			c.kwargs[string(kv[0].(starlark.String))] = toGo(kv[1])
		}
		tl.calls = append(tl.calls, c)
		if result == nil {
			return starlark.None, nil
		}
		return result(c), nil
	})
}

func structOf(kind string, c call) starlark.Value {
	d := starlark.StringDict{}
	for i, a := range c.args {
		d[fmt.Sprintf("arg%d", i)] = starlark.String(fmt.Sprint(a))
	}
	for k, v := range c.kwargs {
		d[k] = starlark.String(fmt.Sprint(v))
	}
	return starlarkstruct.FromStringDict(starlark.String(kind), d)
}

func (tl *tilt) predeclared(root string) starlark.StringDict {
	none := func(string) func(call) starlark.Value { return nil }
	asStruct := func(kind string) func(call) starlark.Value {
		return func(c call) starlark.Value { return structOf(kind, c) }
	}
	p := starlark.StringDict{
		"struct": starlark.NewBuiltin("struct", starlarkstruct.Make),
	}
	for name, res := range map[string]func(call) starlark.Value{
		"local_resource":     none("local_resource"),
		"docker_build":       none("docker_build"),
		"custom_build":       none("custom_build"),
		"k8s_yaml":           none("k8s_yaml"),
		"k8s_resource":       none("k8s_resource"),
		"allow_k8s_contexts": none("allow_k8s_contexts"),
		"watch_file":         none("watch_file"),
		"update_settings":    none("update_settings"),
		"helm":               asStruct("blob"),
		"blob":               asStruct("blob"),
		"sync":               asStruct("sync"),
		"run":                asStruct("run"),
		"fall_back_on":       asStruct("fall_back_on"),
		"restart_container":  asStruct("restart_container"),
		"port_forward":       asStruct("port_forward"),
		"link":               asStruct("link"),
		"local": func(c call) starlark.Value {
			return starlark.String("")
		},
		"read_file": func(c call) starlark.Value {
			b, _ := os.ReadFile(filepath.Join(root, c.str(0, "file_path")))
			return starlark.String(b)
		},
	} {
		p[name] = tl.stub(name, res)
	}
	return p
}

// extensions are the Tilt extensions the Tiltfile may load.
func (tl *tilt) load(_ *starlark.Thread, module string) (starlark.StringDict, error) {
	switch module {
	case "ext://restart_process":
		return starlark.StringDict{
			"docker_build_with_restart": tl.stub("docker_build_with_restart", nil),
			"custom_build_with_restart": tl.stub("custom_build_with_restart", nil),
		}, nil
	}
	return nil, fmt.Errorf("load(%q): not an extension this test knows", module)
}

func (tl *tilt) named(fn string) []call {
	var out []call
	for _, c := range tl.calls {
		if c.fn == fn {
			out = append(out, c)
		}
	}
	return out
}

func runTiltfile(t *testing.T, root string) *tilt {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(root, "Tiltfile"))
	if err != nil {
		t.Fatalf("read the Tiltfile: %v", err)
	}
	tl := &tilt{}
	thread := &starlark.Thread{Name: "Tiltfile", Load: tl.load, Print: func(_ *starlark.Thread, msg string) { t.Log(msg) }}
	// The dialect Tilt runs: top-level control flow, sets, while, recursion.
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	if _, err := starlark.ExecFileOptions(opts, thread, "Tiltfile", src, tl.predeclared(root)); err != nil {
		if ee := (*starlark.EvalError)(nil); errors.As(err, &ee) {
			t.Fatalf("Tiltfile: %s", ee.Backtrace())
		}
		t.Fatalf("Tiltfile: %v", err)
	}
	return tl
}

func TestTiltfile(t *testing.T) {
	root := repoRoot(t)
	tl := runTiltfile(t, root)

	exists := func(p string) bool {
		_, err := os.Stat(filepath.Join(root, p))
		return err == nil
	}
	// Outputs the Tiltfile's own commands produce (go build -o X).
	outputs := map[string]bool{}
	outRe := regexp.MustCompile(`\s-o\s+(\S+)`)
	for _, c := range tl.named("local_resource") {
		for _, m := range outRe.FindAllStringSubmatch(c.str(1, "cmd"), -1) {
			outputs[filepath.Clean(m[1])] = true
		}
	}
	checkPath := func(what, p string) {
		t.Helper()
		if p == "" {
			t.Errorf("%s: empty path", what)
			return
		}
		if !exists(p) && !outputs[filepath.Clean(p)] {
			t.Errorf("%s: %s does not exist in the repository", what, p)
		}
	}

	// local_resource: every dep exists; the commands name real things.
	resources := map[string]bool{}
	var binary, generate *call
	for _, c := range tl.named("local_resource") {
		name := c.str(0, "name")
		resources[name] = true
		for _, d := range c.strings(-1, "deps") {
			checkPath("local_resource "+name+" deps", d)
		}
		cmd := c.str(1, "cmd")
		for _, m := range regexp.MustCompile(`\./[\w/.-]+`).FindAllString(cmd, -1) {
			checkPath("local_resource "+name+" cmd", m)
		}
		if target, ok := strings.CutPrefix(cmd, "make "); ok {
			mk := readFile(t, filepath.Join(root, "Makefile"))
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(strings.Fields(target)[0]) + `:`).MatchString(mk) {
				t.Errorf("local_resource %s runs make %s, which the Makefile lacks", name, target)
			}
		}
		if strings.Contains(cmd, "go build") {
			binary = &c
		}
		if strings.Contains(cmd, "make generate") {
			generate = &c
		}
	}
	if binary == nil {
		t.Fatal("no local_resource builds the binary")
	}
	cmd := binary.str(1, "cmd")
	for _, want := range []string{"CGO_ENABLED=0", "GOOS=linux", "go build -o .tilt/telemesh ./cmd/telemesh"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("binary cmd %q lacks %q", cmd, want)
		}
	}
	deps := binary.strings(-1, "deps")
	for _, want := range []string{"cmd", "internal", "gateway", "services", "gen", "migrations"} {
		if !slices.ContainsFunc(deps, func(d string) bool { return strings.TrimSuffix(d, "/") == want }) {
			t.Errorf("binary deps %v lack %s/", deps, want)
		}
	}
	if generate == nil {
		t.Error("no local_resource runs make generate")
	} else if !slices.ContainsFunc(generate.strings(-1, "deps"), func(d string) bool { return strings.TrimSuffix(d, "/") == "proto" }) {
		t.Errorf("make generate does not watch proto/: %v", generate.strings(-1, "deps"))
	}

	// The image: the small dev Dockerfile, the binary synced in place.
	builds := append(tl.named("docker_build"), tl.named("docker_build_with_restart")...)
	if len(builds) != 1 {
		t.Fatalf("%d image builds, want 1 (one image for every stage)", len(builds))
	}
	build := builds[0]
	imageRef := build.str(0, "ref")
	checkPath("docker_build context", build.str(1, "context"))
	dockerfile := build.str(-1, "dockerfile")
	checkPath("docker_build dockerfile", dockerfile)
	df := readFile(t, filepath.Join(root, dockerfile))
	if !regexp.MustCompile(`(?m)^FROM gcr.io/distroless/`).MatchString(df) || !strings.Contains(df, "COPY") || !strings.Contains(df, ".tilt/telemesh") {
		t.Errorf("%s should be FROM distroless and COPY .tilt/telemesh:\n%s", dockerfile, df)
	}
	for _, o := range build.strings(-1, "only") {
		checkPath("docker_build only", o)
	}
	synced := false
	for _, step := range build.arg(-1, "live_update").([]any) {
		s, ok := step.(map[string]any)
		if !ok || s["_kind"] != "sync" {
			continue
		}
		local := s["arg0"].(string)
		checkPath("live_update sync", local)
		synced = synced || filepath.Clean(local) == ".tilt/telemesh"
	}
	if !synced {
		t.Error("live_update does not sync the binary .tilt/telemesh")
	}
	if build.fn != "docker_build_with_restart" && len(tl.named("restart_container")) == 0 {
		t.Error("a live update does not restart the process")
	}

	// The YAML: the chart with the dev values, and the dev dependencies.
	var rendered []*object
	helms := tl.named("helm")
	if len(helms) != 1 {
		t.Fatalf("%d helm() calls, want 1", len(helms))
	}
	h := helms[0]
	chartPath := h.str(0, "paths")
	checkPath("helm chart", filepath.Join(chartPath, "Chart.yaml"))
	if filepath.Clean(chartPath) != "deploy/helm/telemesh" {
		t.Errorf("helm() renders %s, want deploy/helm/telemesh", chartPath)
	}
	valueFiles := h.strings(-1, "values")
	if !slices.Contains(valueFiles, "deploy/helm/telemesh/values-dev.yaml") {
		t.Errorf("helm() values %v lack deploy/helm/telemesh/values-dev.yaml", valueFiles)
	}
	vals := map[string]any{}
	for _, f := range valueFiles {
		checkPath("helm values", f)
		for k, v := range readValues(t, filepath.Join(root, f)) {
			vals[k] = v
		}
	}
	r, err := renderAs(t, vals, h.str(-1, "name"), h.str(-1, "namespace"))
	if err != nil {
		t.Fatalf("render the chart as the Tiltfile does: %v", err)
	}
	rendered = append(rendered, r.Objects...)
	for _, c := range tl.named("k8s_yaml") {
		if p, ok := c.arg(0, "yaml").(string); ok {
			checkPath("k8s_yaml", p)
			for _, doc := range splitManifest(readFile(t, filepath.Join(root, p))) {
				o := decode(t, doc, false)
				if o.Namespace != "" && o.Namespace != h.str(-1, "namespace") {
					t.Errorf("%s: %s/%s is in namespace %s, the chart in %s", p, o.Kind, o.Name, o.Namespace, h.str(-1, "namespace"))
				}
				rendered = append(rendered, o)
			}
		}
	}
	for _, c := range append(tl.named("read_file"), tl.named("watch_file")...) {
		checkPath(c.fn, c.str(0, "file_path"))
	}

	workloads := map[string]*object{}
	for _, o := range rendered {
		switch o.Kind {
		case "Deployment", "StatefulSet", "Job", "DaemonSet":
			workloads[o.Name] = o
		}
	}

	// One k8s_resource per stage, downstream first, each depending on the
	// stages it calls.
	var order []string
	stageDeps := map[string][]string{}
	for _, c := range tl.named("k8s_resource") {
		workload := c.str(0, "workload")
		o := workloads[workload]
		if o == nil {
			t.Errorf("k8s_resource(%q): no such workload in the YAML the Tiltfile deploys", workload)
			continue
		}
		name := c.str(-1, "new_name")
		if name == "" {
			name = workload
		}
		resources[name] = true
		stage := o.Labels["app.kubernetes.io/component"]
		if !slices.Contains(grpcStages, stage) || o.Kind != "Deployment" {
			continue
		}
		if name != stage {
			t.Errorf("k8s_resource for %s is named %q, want %q", workload, name, stage)
		}
		order = append(order, stage)
		stageDeps[stage] = c.strings(-1, "resource_deps")

		// Port forwards for the gRPC and the admin port.
		var forwarded []int64
		for _, pf := range c.arg(-1, "port_forwards").([]any) {
			switch pf := pf.(type) {
			case map[string]any:
				var n int64
				fmt.Sscan(pf["arg0"].(string), &n)
				forwarded = append(forwarded, n)
			case string:
				var n int64
				fmt.Sscan(strings.Split(pf, ":")[0], &n)
				forwarded = append(forwarded, n)
			case int64:
				forwarded = append(forwarded, pf)
			}
		}
		d := o.Typed.(*appsv1.Deployment)
		for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
			if (p.Name == "grpc" || p.Name == "admin") && !slices.Contains(forwarded, int64(p.ContainerPort)) {
				t.Errorf("%s: port %s %d is not forwarded (%v)", stage, p.Name, p.ContainerPort, forwarded)
			}
		}
		img := d.Spec.Template.Spec.Containers[0].Image
		if repo, _, _ := strings.Cut(img, ":"); repo != imageRef {
			t.Errorf("%s runs image %q; the Tiltfile builds %q", stage, img, imageRef)
		}
		if c := d.Spec.Template.Spec.Containers[0]; len(c.Command) != 0 {
			t.Errorf("%s sets command %v; the restart wrapper replaces it, use args", stage, c.Command)
		}
	}
	wantOrder := []string{"publisher", "persister", "deriver", "validator", "gateway"}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("k8s_resource stages in order %v, want %v", order, wantOrder)
	}
	for _, s := range grpcStages {
		var got []string
		for _, d := range stageDeps[s] {
			if slices.Contains(grpcStages, d) {
				got = append(got, d)
			}
		}
		want := slices.Clone(nextHops[s])
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s resource_deps %v: want exactly the stages it calls %v", s, stageDeps[s], want)
		}
	}
	// Every resource_dep names a resource the Tiltfile defines.
	for _, c := range append(tl.named("k8s_resource"), tl.named("local_resource")...) {
		for _, d := range c.strings(-1, "resource_deps") {
			if !resources[d] {
				t.Errorf("%s %s depends on %q, which is not a resource", c.fn, c.str(0, "workload"), d)
			}
		}
	}
}

// deploy/dev/deps.yaml, the Tiltfile's throwaway Postgres and NATS, decodes
// strictly and serves the addresses values-dev.yaml points at.
func TestDevDependencies(t *testing.T) {
	root := repoRoot(t)
	var objs []*object
	for _, doc := range splitManifest(readFile(t, filepath.Join(root, "deploy", "dev", "deps.yaml"))) {
		objs = append(objs, decode(t, doc, false))
	}
	services := map[string]int32{}
	for _, o := range objs {
		if o.Kind == "Service" {
			for _, p := range o.Typed.(*corev1.Service).Spec.Ports {
				services[o.Name+":"+fmt.Sprint(p.Port)] = p.Port
			}
		}
		if o.Kind == "StatefulSet" {
			ss := o.Typed.(*appsv1.StatefulSet)
			if ss.Spec.Template.Spec.Containers[0].ReadinessProbe == nil {
				t.Errorf("%s has no readiness probe: the stages would start before it serves", o.Name)
			}
		}
	}
	dev := readFile(t, filepath.Join(chartDir(t), "values-dev.yaml"))
	for _, addr := range []string{"postgres:5432", "nats:4222"} {
		if _, ok := services[addr]; !ok {
			t.Errorf("no Service for %s", addr)
		}
		if !strings.Contains(dev, "@"+addr+"/") && !strings.Contains(dev, "//"+addr) {
			t.Errorf("values-dev.yaml does not point at %s", addr)
		}
	}
}
