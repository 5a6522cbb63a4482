package charttest

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The value sets of testdata/, each rendered and held to every invariant.
var valueSets = []struct {
	file string
	// what the set must turn on, beyond the invariants every set meets
	wantHPA, wantTLS, wantCertificates, wantViewer, wantIngress, wantSecrets bool
}{
	{file: "defaults.yaml"},
	{file: "scaled.yaml", wantHPA: true, wantViewer: true},
	{file: "mtls.yaml", wantTLS: true},
	{file: "mtls-cert-manager.yaml", wantTLS: true, wantCertificates: true, wantViewer: true},
	{file: "viewer-ingress.yaml", wantViewer: true, wantIngress: true, wantSecrets: true},
}

func TestRenderValueSets(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(strings.TrimSuffix(vs.file, ".yaml"), func(t *testing.T) {
			vals := readValues(t, filepath.Join("testdata", vs.file))
			r := mustRender(t, vals)
			checkInvariants(t, r, secretStrings(vals))
			v := r.values(t)

			hpas := r.all("HorizontalPodAutoscaler")
			if vs.wantHPA {
				for _, s := range allStages {
					if v.Stages[s].Enabled && r.find("HorizontalPodAutoscaler", stageName(s)) == nil {
						t.Errorf("%s: no HorizontalPodAutoscaler", s)
					}
				}
			} else if len(hpas) != 0 {
				t.Errorf("%d HorizontalPodAutoscalers rendered, want none", len(hpas))
			}
			if got := v.TLS.Enabled; got != vs.wantTLS {
				t.Errorf("tls.enabled = %v, want %v", got, vs.wantTLS)
			}
			if got := len(r.all("Certificate")) > 0; got != vs.wantCertificates {
				t.Errorf("Certificates rendered = %v, want %v", got, vs.wantCertificates)
			}
			if got := r.find("Deployment", stageName("viewer")) != nil; got != vs.wantViewer {
				t.Errorf("viewer Deployment rendered = %v, want %v", got, vs.wantViewer)
			}
			if got := len(r.all("Ingress")) == 1; got != vs.wantIngress {
				t.Errorf("Ingress rendered = %v, want %v", got, vs.wantIngress)
			}
			if got := r.find("Secret", releaseName+"-secrets") != nil; got != vs.wantSecrets {
				t.Errorf("chart-managed Secret rendered = %v, want %v", got, vs.wantSecrets)
			}
			if vs.wantSecrets && len(secretStrings(vals)) < 5 {
				t.Errorf("the value set %s should carry its secret test strings", vs.file)
			}
		})
	}
}

// The dev values the Tiltfile deploys meet the same invariants, except that
// the dev root filesystem is writable for Tilt's live update.
func TestRenderDevValues(t *testing.T) {
	vals := readValues(t, filepath.Join(chartDir(t), "values-dev.yaml"))
	r, err := renderAs(t, vals, "telemesh", "telemesh-dev")
	if err != nil {
		t.Fatalf("render values-dev.yaml: %v", err)
	}
	checkInvariantsFor(t, r, nil, "telemesh", "telemesh-dev")
	for _, s := range grpcStages {
		d := r.find("Deployment", "telemesh-"+s).Typed.(*appsv1.Deployment)
		if got := d.Spec.Template.Spec.Containers[0].Image; got != "telemesh:dev" {
			t.Errorf("%s image %q, want telemesh:dev (the Tiltfile's docker_build)", s, got)
		}
	}
}

func stageName(s string) string { return releaseName + "-" + s }

func checkInvariants(t *testing.T, r *rendering, secrets []string) {
	t.Helper()
	checkInvariantsFor(t, r, secrets, releaseName, namespace)
}

func checkInvariantsFor(t *testing.T, r *rendering, secrets []string, rel, ns string) {
	t.Helper()
	v := r.values(t)
	name := func(s string) string { return rel + "-" + s }

	// Every object: in the release namespace, with the recommended labels.
	for _, o := range r.Objects {
		if o.Kind == "Namespace" {
			continue
		}
		if o.Namespace != ns {
			t.Errorf("%s/%s: namespace %q, want %q", o.Kind, o.Name, o.Namespace, ns)
		}
		for _, l := range []string{
			"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
			"app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart",
		} {
			if o.Labels[l] == "" {
				t.Errorf("%s/%s: label %s missing", o.Kind, o.Name, l)
			}
		}
		if o.Labels["app.kubernetes.io/instance"] != rel || o.Labels["app.kubernetes.io/managed-by"] != "Helm" ||
			o.Labels["app.kubernetes.io/part-of"] != "telemesh" || o.Labels["app.kubernetes.io/name"] != "telemesh" {
			t.Errorf("%s/%s: labels %v", o.Kind, o.Name, o.Labels)
		}
		if len(o.Name) > 63 {
			t.Errorf("%s/%s: name longer than 63", o.Kind, o.Name)
		}
	}

	// No secret in plain text: not in any object, not in the notes.
	for _, s := range secrets {
		if strings.Contains(r.Manifest, s) {
			t.Errorf("secret test string %q appears in plain text in the rendered output", s)
		}
	}
	// ...and the chart-managed Secret, when there is one, carries them base64.
	if sec := r.find("Secret", rel+"-secrets"); sec != nil {
		data := sec.Typed.(*corev1.Secret).Data
		var joined strings.Builder
		for _, k := range sortedKeys(data) {
			joined.Write(data[k])
			joined.WriteString("\n")
		}
		for _, s := range secrets {
			if !strings.Contains(joined.String(), s) {
				t.Errorf("secret test string %q is not in Secret %s", s, sec.Name)
			}
		}
		if strings.Contains(sec.Raw, "stringData") {
			t.Errorf("Secret %s uses stringData (plain text)", sec.Name)
		}
	}

	services := map[string]*corev1.Service{}
	for _, o := range r.all("Service") {
		services[o.Name] = o.Typed.(*corev1.Service)
	}
	secretKeys := map[string]map[string]bool{} // rendered Secrets and their keys
	for _, o := range r.all("Secret") {
		keys := map[string]bool{}
		for k := range o.Typed.(*corev1.Secret).Data {
			keys[k] = true
		}
		secretKeys[o.Name] = keys
	}

	for _, s := range allStages {
		sv, ok := v.Stages[s]
		if !ok {
			t.Fatalf("values have no stage %s", s)
		}
		n := name(s)
		if !sv.Enabled {
			for _, o := range r.Objects {
				if o.Labels["app.kubernetes.io/component"] == s {
					t.Errorf("stage %s is disabled but %s/%s is rendered", s, o.Kind, o.Name)
				}
			}
			continue
		}
		t.Run(s, func(t *testing.T) {
			checkStage(t, r, v, s, sv, n, rel, ns, services, secretKeys)
		})
	}

	checkCertificates(t, r, v, rel, ns)

	// The migration Job: a pre-install and pre-upgrade hook.
	if v.Migrations.Enabled {
		o := r.find("Job", name("migrate"))
		if o == nil {
			t.Fatalf("no migration Job %s", name("migrate"))
		}
		if !o.Hook {
			t.Errorf("Job %s is not a hook", o.Name)
		}
		hooks := strings.Split(o.Annotations["helm.sh/hook"], ",")
		if !slices.Contains(hooks, "pre-install") || !slices.Contains(hooks, "pre-upgrade") {
			t.Errorf("Job hook annotation %q, want pre-install and pre-upgrade", o.Annotations["helm.sh/hook"])
		}
		if _, err := strconv.Atoi(o.Annotations["helm.sh/hook-weight"]); err != nil {
			t.Errorf("Job hook-weight %q: %v", o.Annotations["helm.sh/hook-weight"], err)
		}
		if !strings.Contains(o.Annotations["helm.sh/hook-delete-policy"], "before-hook-creation") {
			t.Errorf("Job hook-delete-policy %q", o.Annotations["helm.sh/hook-delete-policy"])
		}
		var events []release.HookEvent
		for _, h := range r.Release.Hooks {
			if h.Kind == "Job" && h.Name == o.Name {
				events = h.Events
			}
		}
		if !slices.Contains(events, release.HookPreInstall) || !slices.Contains(events, release.HookPreUpgrade) {
			t.Errorf("Helm sees the Job's hook events as %v", events)
		}
		job := o.Typed.(*batchv1.Job)
		ps := job.Spec.Template.Spec
		if ps.RestartPolicy != corev1.RestartPolicyNever && ps.RestartPolicy != corev1.RestartPolicyOnFailure {
			t.Errorf("Job restartPolicy %q", ps.RestartPolicy)
		}
		c := ps.Containers[0]
		if got := strings.Join(c.Args, " "); got != "migrate up" {
			t.Errorf("Job args %q, want migrate up", got)
		}
		checkSecretEnv(t, c.Env, "TELEMESH_DATABASE_URL", secretKeys, true)
		checkPodSecurity(t, "migrate", &ps, &c, v.SecurityContext.ReadOnlyRootFilesystem)
		// A hook runs before the release's objects exist: everything it
		// reads must be a hook itself or pre-exist.
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				if sec := r.find("Secret", e.ValueFrom.SecretKeyRef.Name); sec != nil && !sec.Hook {
					t.Errorf("migration Job reads Secret %s, which is created only after the hook", sec.Name)
				}
			}
		}
	} else if r.find("Job", name("migrate")) != nil {
		t.Errorf("migrations disabled but the Job is rendered")
	}

	// ServiceMonitors select a Service by its labels and scrape its admin port.
	sms := r.all("ServiceMonitor")
	if v.ServiceMonitor.Enabled {
		for _, s := range allStages {
			if v.Stages[s].Enabled && r.find("ServiceMonitor", name(s)) == nil {
				t.Errorf("no ServiceMonitor for %s", s)
			}
		}
	} else if len(sms) != 0 {
		t.Errorf("serviceMonitor disabled but %d rendered", len(sms))
	}
	for _, o := range sms {
		spec := o.Unstructured["spec"].(map[string]any)
		sel := labels.Set{}
		for k, v := range spec["selector"].(map[string]any)["matchLabels"].(map[string]any) {
			sel[k] = v.(string)
		}
		matched := 0
		for _, svc := range services {
			if labels.SelectorFromSet(sel).Matches(labels.Set(svc.Labels)) {
				matched++
				endpoint := spec["endpoints"].([]any)[0].(map[string]any)
				if !hasServicePort(svc, endpoint["port"].(string)) {
					t.Errorf("ServiceMonitor %s scrapes port %v, which Service %s lacks", o.Name, endpoint["port"], svc.Name)
				}
			}
		}
		if matched != 1 {
			t.Errorf("ServiceMonitor %s selects %d Services, want 1", o.Name, matched)
		}
	}

	// The Ingress routes to the viewer's Service by a port it has.
	for _, o := range r.all("Ingress") {
		ing := o.Typed.(*networkingv1.Ingress)
		for _, rule := range ing.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				svc := services[p.Backend.Service.Name]
				if svc == nil {
					t.Errorf("Ingress %s routes to missing Service %s", ing.Name, p.Backend.Service.Name)
					continue
				}
				if svc.Name != name("viewer") || !hasServicePort(svc, p.Backend.Service.Port.Name) {
					t.Errorf("Ingress %s routes to %s port %q", ing.Name, svc.Name, p.Backend.Service.Port.Name)
				}
			}
		}
	}
	if v.Ingress.Enabled != (len(r.all("Ingress")) == 1) {
		t.Errorf("ingress.enabled %v but %d Ingresses", v.Ingress.Enabled, len(r.all("Ingress")))
	}

	// Pods run as the chart's ServiceAccount, which must exist.
	if sa := r.find("ServiceAccount", rel); sa == nil {
		t.Errorf("no ServiceAccount %s", rel)
	} else if a := sa.Typed.(*corev1.ServiceAccount).AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("ServiceAccount %s mounts its token", rel)
	}

	// The notes say how to reach the stages.
	notes := r.Release.Info.Notes
	for _, want := range []string{"kubectl -n " + ns + " port-forward", "grpcurl -plaintext", "grpc.health.v1.Health/Check"} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES.txt lacks %q:\n%s", want, notes)
		}
	}
}

func checkStage(t *testing.T, r *rendering, v chartValues, s string, sv stageValues, n, rel, ns string,
	services map[string]*corev1.Service, secretKeys map[string]map[string]bool) {
	grpc := s != "viewer"
	tls := v.TLS.Enabled && grpc

	// Deployment.
	o := r.find("Deployment", n)
	if o == nil {
		t.Fatalf("no Deployment %s", n)
	}
	if o.Labels["app.kubernetes.io/component"] != s {
		t.Errorf("component label %q", o.Labels["app.kubernetes.io/component"])
	}
	d := o.Typed.(*appsv1.Deployment)
	podLabels := labels.Set(d.Spec.Template.Labels)
	sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels)
	if !sel.Matches(podLabels) {
		t.Errorf("Deployment selector %v does not match its pods %v", d.Spec.Selector.MatchLabels, podLabels)
	}
	if sv.Autoscaling.Enabled {
		if d.Spec.Replicas != nil {
			t.Errorf("replicas %d set although an HPA scales the Deployment", *d.Spec.Replicas)
		}
	} else if d.Spec.Replicas == nil || *d.Spec.Replicas != sv.Replicas {
		t.Errorf("replicas %s, want %d", ptr(d.Spec.Replicas), sv.Replicas)
	}
	ps := d.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	if len(c.Args) < 2 || c.Args[0] != "serve" || c.Args[1] != s {
		t.Errorf("args %q, want serve %s", c.Args, s)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resources.requests %v lack cpu or memory", c.Resources.Requests)
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources.limits %v lack memory", c.Resources.Limits)
	}
	checkPodSecurity(t, s, &ps, &c, v.SecurityContext.ReadOnlyRootFilesystem)
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Errorf("the pod mounts a ServiceAccount token")
	}
	if ps.ServiceAccountName != rel {
		t.Errorf("serviceAccountName %q, want %q", ps.ServiceAccountName, rel)
	}

	// Ports.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	mainPort := "grpc"
	if !grpc {
		mainPort = "http"
	}
	if ports[mainPort] != sv.Port || ports["admin"] != sv.AdminPort {
		t.Errorf("container ports %v, want %s %d and admin %d", ports, mainPort, sv.Port, sv.AdminPort)
	}
	if want := defaultPorts[s]; sv.Port != want[0] || sv.AdminPort != want[1] {
		t.Errorf("ports %d/%d, want the binary's defaults %d/%d", sv.Port, sv.AdminPort, want[0], want[1])
	}

	// ConfigMap: listen addresses, the shutdown grace.
	var cm *corev1.ConfigMap
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			if o := r.find("ConfigMap", ef.ConfigMapRef.Name); o != nil {
				cm = o.Typed.(*corev1.ConfigMap)
			}
		}
	}
	if cm == nil {
		t.Fatalf("the container reads no rendered ConfigMap (envFrom %v)", c.EnvFrom)
	}
	if got, want := cm.Data["TELEMESH_LISTEN"], fmt.Sprintf(":%d", sv.Port); got != want {
		t.Errorf("TELEMESH_LISTEN %q, want %q", got, want)
	}
	if got, want := cm.Data["TELEMESH_ADMIN_LISTEN"], fmt.Sprintf(":%d", sv.AdminPort); got != want {
		t.Errorf("TELEMESH_ADMIN_LISTEN %q, want %q", got, want)
	}
	for k, val := range cm.Data {
		if !strings.HasPrefix(k, "TELEMESH_") {
			t.Errorf("ConfigMap key %s is not a TELEMESH_ setting", k)
		}
		if strings.Contains(k, "DATABASE_URL") || strings.Contains(k, "PASSWORD") || strings.Contains(k, "TOKEN") || k == "TELEMESH_NATS_URL" {
			t.Errorf("secret setting %s in ConfigMap", k)
		}
		if strings.Contains(val, "e+") {
			t.Errorf("ConfigMap %s=%q: a number in exponent form", k, val)
		}
	}
	grace, err := time.ParseDuration(cm.Data["TELEMESH_SHUTDOWN_GRACE"])
	if err != nil {
		t.Fatalf("TELEMESH_SHUTDOWN_GRACE %q: %v", cm.Data["TELEMESH_SHUTDOWN_GRACE"], err)
	}
	wantGrace := v.Shutdown.GraceSeconds
	if sv.ShutdownGraceSeconds > 0 {
		wantGrace = sv.ShutdownGraceSeconds
	}
	if grace != time.Duration(wantGrace)*time.Second {
		t.Errorf("shutdown grace %v, want %ds", grace, wantGrace)
	}
	preStop := int64(0)
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = c.Lifecycle.PreStop.Sleep.Seconds
	}
	if preStop != v.Shutdown.PreStopSleepSeconds {
		t.Errorf("preStop sleep %ds, want %ds", preStop, v.Shutdown.PreStopSleepSeconds)
	}
	if tg := ps.TerminationGracePeriodSeconds; tg == nil || *tg <= int64(grace/time.Second)+preStop {
		t.Errorf("terminationGracePeriodSeconds %s must exceed preStop %ds + shutdown grace %v", ptr(tg), preStop, grace)
	}

	// Probes: readiness is gRPC health on the main port, or on the
	// plaintext health port with mTLS, which says NOT_SERVING while the
	// stage cannot work; liveness and startup are the admin port's /healthz,
	// so a stage waiting for its database is not restarted. HTTP /healthz
	// for the viewer.
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil {
			t.Errorf("no %s probe", name)
			continue
		}
		if grpc && name != "readiness" {
			if p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "admin" {
				t.Errorf("%s probe %+v, want HTTP GET /healthz on admin", name, p.ProbeHandler)
			}
			continue
		}
		if grpc {
			want := sv.Port
			if tls {
				want = v.TLS.HealthPort
			}
			if p.GRPC == nil || p.GRPC.Port != want {
				t.Errorf("%s probe %+v, want gRPC health on port %d", name, p.ProbeHandler, want)
			}
		} else if p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != mainPort {
			t.Errorf("%s probe %+v, want HTTP GET /healthz on %s", name, p.ProbeHandler, mainPort)
		}
	}

	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e
	}

	// mTLS: the certificates mounted, their env, the plaintext health port.
	if tls {
		if cm.Data["TELEMESH_HEALTH_LISTEN"] != fmt.Sprintf(":%d", v.TLS.HealthPort) || ports["health"] != v.TLS.HealthPort {
			t.Errorf("health port: TELEMESH_HEALTH_LISTEN %q, container ports %v", cm.Data["TELEMESH_HEALTH_LISTEN"], ports)
		}
		for k, file := range map[string]string{"TELEMESH_TLS_CERT_FILE": "tls.crt", "TELEMESH_TLS_KEY_FILE": "tls.key", "TELEMESH_TLS_CA_FILE": "ca.crt"} {
			if env[k].Value != "/etc/telemesh/tls/"+file {
				t.Errorf("%s=%q", k, env[k].Value)
			}
		}
		// The stage's own certificate, with the identity its callees admit
		// it by.
		if !mounts(ps, c, "/etc/telemesh/tls", tlsSecretOf(n, sv)) {
			t.Errorf("the stage's own TLS Secret %s is not mounted at /etc/telemesh/tls", tlsSecretOf(n, sv))
		}
		if got := cm.Data["TELEMESH_TLS_TRUST_DOMAIN"]; got != trustDomainOf(v) {
			t.Errorf("TELEMESH_TLS_TRUST_DOMAIN %q, want %q", got, trustDomainOf(v))
		}
	} else {
		for _, k := range []string{"TELEMESH_TLS_CERT_FILE", "TELEMESH_HEALTH_LISTEN", "TELEMESH_TLS_TRUST_DOMAIN"} {
			if _, ok := env[k]; ok || cm.Data[k] != "" {
				t.Errorf("%s set without tls", k)
			}
		}
	}

	// Secrets only by reference.
	checkSecretEnv(t, c.Env, "TELEMESH_DATABASE_URL", secretKeys, true)
	if s == "gateway" || s == "publisher" || s == "viewer" {
		checkSecretEnv(t, c.Env, "TELEMESH_NATS_URL", secretKeys, true)
	}
	if s == "viewer" {
		checkSecretEnv(t, c.Env, "TELEMESH_VIEWER_TOKEN", secretKeys, true)
	} else if _, ok := env["TELEMESH_VIEWER_TOKEN"]; ok {
		t.Errorf("the viewer token is given to %s", s)
	}
	for _, k := range []string{"TELEMESH_NATS_PASSWORD", "TELEMESH_NATS_TOKEN"} {
		checkSecretEnv(t, c.Env, k, secretKeys, false)
	}
	if e, ok := env["TELEMESH_NATS_CREDS_FILE"]; ok && !mounts(ps, c, filepath.Dir(e.Value), "") {
		t.Errorf("TELEMESH_NATS_CREDS_FILE %s is not on a mounted Secret", e.Value)
	}

	// Next hops: dns:/// targets of rendered headless Services of the
	// stages the code says this stage calls.
	var gotHops []string
	for k, e := range env {
		if !strings.HasSuffix(k, "_ADDR") {
			continue
		}
		next := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(k, "TELEMESH_"), "_ADDR"))
		gotHops = append(gotHops, next)
		target, ok := strings.CutPrefix(e.Value, "dns:///")
		if !ok {
			t.Errorf("%s=%q is not a dns:/// target", k, e.Value)
			continue
		}
		host, portStr, ok := strings.Cut(target, ":")
		port, err := strconv.Atoi(portStr)
		if !ok || err != nil {
			t.Errorf("%s=%q: no port", k, e.Value)
			continue
		}
		svcName, rest, _ := strings.Cut(host, ".")
		if rest != ns+".svc.cluster.local" {
			t.Errorf("%s=%q: want <service>.%s.svc.cluster.local", k, e.Value, ns)
		}
		svc := services[svcName]
		if svc == nil {
			t.Errorf("%s=%q: no Service %s is rendered", k, e.Value, svcName)
			continue
		}
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("%s targets Service %s, which is not headless", k, svcName)
		}
		if svc.Labels["app.kubernetes.io/component"] != next {
			t.Errorf("%s targets Service %s of component %q", k, svcName, svc.Labels["app.kubernetes.io/component"])
		}
		found := false
		for _, p := range svc.Spec.Ports {
			found = found || (int(p.Port) == port && p.Name == "grpc")
		}
		if !found {
			t.Errorf("%s=%q: Service %s has no grpc port %d", k, e.Value, svcName, port)
		}
	}
	slices.Sort(gotHops)
	wantHops := slices.Clone(nextHops[s])
	slices.Sort(wantHops)
	if !slices.Equal(gotHops, wantHops) {
		t.Errorf("next hops %v, want %v", gotHops, wantHops)
	}
	for k, e := range env {
		if strings.HasPrefix(e.Value, "dns:///") && !strings.HasSuffix(k, "_ADDR") {
			t.Errorf("unexpected target env %s", k)
		}
	}

	// Service: headless for gRPC, both ports, selecting the pods.
	svc := services[n]
	if svc == nil {
		t.Fatalf("no Service %s", n)
	}
	if grpc && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service clusterIP %q, want None (headless)", svc.Spec.ClusterIP)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("Service selector %v does not match the pods", svc.Spec.Selector)
	}
	for _, p := range []struct {
		name string
		port int32
	}{{mainPort, sv.Port}, {"admin", sv.AdminPort}} {
		found := false
		for _, sp := range svc.Spec.Ports {
			if sp.Name == p.name && sp.Port == p.port && sp.TargetPort.String() == p.name {
				found = true
			}
		}
		if !found {
			t.Errorf("Service lacks port %s %d -> %s: %+v", p.name, p.port, p.name, svc.Spec.Ports)
		}
	}

	// PodDisruptionBudget.
	if sv.PDB.Enabled {
		o := r.find("PodDisruptionBudget", n)
		if o == nil {
			t.Errorf("no PodDisruptionBudget")
		} else {
			pdb := o.Typed.(*policyv1.PodDisruptionBudget)
			if !labels.SelectorFromSet(pdb.Spec.Selector.MatchLabels).Matches(podLabels) {
				t.Errorf("PDB selector does not match the pods")
			}
			if (pdb.Spec.MinAvailable == nil) == (pdb.Spec.MaxUnavailable == nil) {
				t.Errorf("PDB wants exactly one of minAvailable and maxUnavailable")
			}
		}
	} else if r.find("PodDisruptionBudget", n) != nil {
		t.Errorf("pdb disabled but rendered")
	}

	// HorizontalPodAutoscaler.
	if ho := r.find("HorizontalPodAutoscaler", n); sv.Autoscaling.Enabled {
		if ho == nil {
			t.Fatalf("autoscaling enabled but no HorizontalPodAutoscaler")
		}
		hpa := ho.Typed.(*autoscalingv2.HorizontalPodAutoscaler)
		ref := hpa.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
			t.Errorf("HPA targets %+v, want apps/v1 Deployment %s", ref, d.Name)
		}
		if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != sv.Autoscaling.MinReplicas || hpa.Spec.MaxReplicas != sv.Autoscaling.MaxReplicas {
			t.Errorf("HPA min/max %s/%d, want %d/%d", ptr(hpa.Spec.MinReplicas), hpa.Spec.MaxReplicas, sv.Autoscaling.MinReplicas, sv.Autoscaling.MaxReplicas)
		}
		if len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU ||
			hpa.Spec.Metrics[0].Resource.Target.AverageUtilization == nil || *hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != sv.Autoscaling.Target {
			t.Errorf("HPA metrics %+v, want CPU utilization %d%%", hpa.Spec.Metrics, sv.Autoscaling.Target)
		}
	} else if ho != nil {
		t.Errorf("autoscaling disabled but an HPA is rendered")
	}

	// NetworkPolicy: the main port only from the callers, admin only from
	// the monitoring namespace.
	np := r.find("NetworkPolicy", n)
	if !v.NetworkPolicy.Enabled {
		if np != nil {
			t.Errorf("networkPolicy disabled but rendered")
		}
		return
	}
	if np == nil {
		t.Fatalf("no NetworkPolicy")
	}
	pol := np.Typed.(*networkingv1.NetworkPolicy)
	if !labels.SelectorFromSet(pol.Spec.PodSelector.MatchLabels).Matches(podLabels) {
		t.Errorf("NetworkPolicy does not select the stage's pods")
	}
	if !slices.Equal(pol.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v", pol.Spec.PolicyTypes)
	}
	var callers []string
	for caller, hops := range nextHops {
		if slices.Contains(hops, s) && v.Stages[caller].Enabled {
			callers = append(callers, caller)
		}
	}
	slices.Sort(callers)
	var mainFrom []string
	adminRules := 0
	for _, rule := range pol.Spec.Ingress {
		if len(rule.Ports) != 1 || rule.Ports[0].Port == nil {
			t.Errorf("ingress rule %+v: want exactly one port", rule)
			continue
		}
		switch port := rule.Ports[0].Port.IntVal; port {
		case sv.Port:
			for _, peer := range rule.From {
				switch {
				case peer.PodSelector != nil && peer.NamespaceSelector == nil:
					mainFrom = append(mainFrom, peer.PodSelector.MatchLabels["app.kubernetes.io/component"])
				case s == "viewer" && peer.NamespaceSelector != nil:
					mainFrom = append(mainFrom, "namespace")
				default:
					t.Errorf("unexpected peer on the %s port: %+v", mainPort, peer)
				}
			}
			if len(rule.From) == 0 {
				t.Errorf("the %s port is open to everyone", mainPort)
			}
		case sv.AdminPort:
			adminRules++
			if len(rule.From) != 1 || rule.From[0].NamespaceSelector == nil {
				t.Errorf("admin rule %+v: want one namespaceSelector peer", rule)
			}
		default:
			t.Errorf("ingress rule on unexpected port %d", port)
		}
	}
	if adminRules != 1 {
		t.Errorf("%d admin rules, want 1", adminRules)
	}
	slices.Sort(mainFrom)
	wantFrom := callers
	if s == "viewer" {
		wantFrom = []string{"namespace"}
	}
	if !slices.Equal(mainFrom, wantFrom) {
		t.Errorf("%s port accepts %v, want only %v", mainPort, mainFrom, wantFrom)
	}
}

func checkPodSecurity(t *testing.T, what string, ps *corev1.PodSpec, c *corev1.Container, wantReadOnly bool) {
	t.Helper()
	psc := ps.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: pod securityContext %+v must run as non-root", what, psc)
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: container securityContext %+v", what, sc)
		return
	}
	if sc.ReadOnlyRootFilesystem == nil || *sc.ReadOnlyRootFilesystem != wantReadOnly {
		t.Errorf("%s: readOnlyRootFilesystem %s, want %v", what, ptr(sc.ReadOnlyRootFilesystem), wantReadOnly)
	}
}

// checkSecretEnv asserts that the variable, when set (or always, if
// required), comes from a Secret key, never from a literal value; and that a
// Secret the chart renders itself has that key.
func checkSecretEnv(t *testing.T, env []corev1.EnvVar, name string, rendered map[string]map[string]bool, required bool) {
	t.Helper()
	for _, e := range env {
		if e.Name != name {
			continue
		}
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s is not read from a Secret: %+v", name, e)
			return
		}
		ref := e.ValueFrom.SecretKeyRef
		if ref.Name == "" || ref.Key == "" {
			t.Errorf("%s: incomplete secretKeyRef %+v", name, ref)
		}
		if keys, ok := rendered[ref.Name]; ok && !keys[ref.Key] {
			t.Errorf("%s reads key %s of Secret %s, which the chart renders without it", name, ref.Key, ref.Name)
		}
		return
	}
	if required {
		t.Errorf("%s is not set", name)
	}
}

// mounts reports whether the container mounts, at path, a volume backed by
// a Secret (named secret, when secret is not empty).
func mounts(ps corev1.PodSpec, c corev1.Container, path, secret string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath != path {
			continue
		}
		for _, vol := range ps.Volumes {
			if vol.Name == m.Name && vol.Secret != nil && (secret == "" || vol.Secret.SecretName == secret) {
				return true
			}
		}
	}
	return false
}

func hasServicePort(svc *corev1.Service, name string) bool {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

// A values file that gives a secret renders it only base64, in a Secret;
// decoding that Secret gives the value back.
func TestSecretValuesAreBase64(t *testing.T) {
	vals := readValues(t, filepath.Join("testdata", "viewer-ingress.yaml"))
	r := mustRender(t, vals)
	sec := r.find("Secret", releaseName+"-secrets")
	if sec == nil {
		t.Fatal("no chart-managed Secret")
	}
	want := map[string]string{
		"database-url":           "postgres://telemesh:PLAINTEXT-db-pw@db:5432/telemesh",
		"database-url-persister": "postgres://persister:PLAINTEXT-persister-pw@db:5432/telemesh",
		"nats-url":               "nats://svc:PLAINTEXT-nats-url-pw@nats:4222",
		"nats-token":             "PLAINTEXT-nats-token",
		"viewer-token":           "PLAINTEXT-viewer-token",
	}
	data := sec.Typed.(*corev1.Secret).Data
	for k, w := range want {
		if string(data[k]) != w {
			t.Errorf("Secret key %s = %q, want %q", k, data[k], w)
		}
		if !strings.Contains(sec.Raw, base64.StdEncoding.EncodeToString([]byte(w))) {
			t.Errorf("Secret key %s is not base64 in the manifest", k)
		}
	}
	if !strings.Contains(string(data["nats.creds"]), "PLAINTEXT-nats-jwt") {
		t.Errorf("nats.creds missing from the Secret")
	}
	// The migration hook reads its own hook Secret, created before it.
	hook := r.find("Secret", releaseName+"-migrate")
	if hook == nil || !hook.Hook {
		t.Fatalf("no hook Secret for the migration Job")
	}
	if w, h := hook.Annotations["helm.sh/hook-weight"], r.find("Job", releaseName+"-migrate").Annotations["helm.sh/hook-weight"]; atoi(t, w) >= atoi(t, h) {
		t.Errorf("hook Secret weight %s must sort before the Job's %s", w, h)
	}
	if string(hook.Typed.(*corev1.Secret).Data["database-url"]) != want["database-url"] {
		t.Errorf("hook Secret holds %q", hook.Typed.(*corev1.Secret).Data["database-url"])
	}
	// The persister uses its own role; the others the shared URL.
	for _, s := range grpcStages {
		d := r.find("Deployment", stageName(s)).Typed.(*appsv1.Deployment)
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "TELEMESH_DATABASE_URL" {
				wantKey := "database-url"
				if s == "persister" {
					wantKey = "database-url-persister"
				}
				if e.ValueFrom.SecretKeyRef.Key != wantKey {
					t.Errorf("%s reads the database URL from key %s, want %s", s, e.ValueFrom.SecretKeyRef.Key, wantKey)
				}
			}
		}
	}
	// Settings with large numbers stay integers.
	cm := r.find("ConfigMap", stageName("gateway")).Typed.(*corev1.ConfigMap)
	if got := cm.Data["TELEMESH_MAX_ACK_PENDING"]; got != "100000" {
		t.Errorf("TELEMESH_MAX_ACK_PENDING=%q, want 100000", got)
	}
	if got := cm.Data["TELEMESH_BATCH_AGE"]; got != "5ms" {
		t.Errorf("TELEMESH_BATCH_AGE=%q", got)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// With the defaults every secret is a reference to an existing Secret and
// the chart renders no Secret of its own.
func TestDefaultsReferenceExistingSecrets(t *testing.T) {
	r := mustRender(t, map[string]any{})
	if n := len(r.all("Secret")); n != 0 {
		t.Fatalf("%d Secrets rendered with the defaults, want 0", n)
	}
	want := map[string]string{
		"TELEMESH_DATABASE_URL": "telemesh-database/url",
		"TELEMESH_NATS_URL":     "telemesh-nats/url",
	}
	for _, s := range []string{"gateway", "publisher"} {
		d := r.find("Deployment", stageName(s)).Typed.(*appsv1.Deployment)
		got := map[string]string{}
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				got[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
			}
		}
		for k, w := range want {
			if got[k] != w {
				t.Errorf("%s: %s from %q, want %q", s, k, got[k], w)
			}
		}
	}
	// Deployments roll when their settings change.
	d := r.find("Deployment", stageName("validator")).Typed.(*appsv1.Deployment)
	if d.Spec.Template.Annotations["checksum/config"] == "" {
		t.Errorf("no checksum/config annotation on the pod template")
	}
}

// ptr prints a pointer's value, or nil.
func ptr[T any](p *T) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

// tlsSecretOf is the Secret a stage named n mounts its certificate from.
func tlsSecretOf(n string, sv stageValues) string {
	if sv.TLSSecret != "" {
		return sv.TLSSecret
	}
	return n + "-tls"
}

// trustDomainOf is the trust domain of the identities.
func trustDomainOf(v chartValues) string {
	if v.TLS.TrustDomain == "" {
		return "telemesh"
	}
	return v.TLS.TrustDomain
}

// checkCertificates holds the certificates to one per stage: with mTLS no
// two stages mount the same Secret; with cert-manager each gRPC stage has a
// Certificate into the Secret it mounts, with its identity as URI SAN and
// the name its callers dial, for server and client auth, from the issuer
// of the values (and one for operator tooling when asked).
func checkCertificates(t *testing.T, r *rendering, v chartValues, rel, ns string) {
	t.Helper()
	certs := map[string]map[string]any{}
	for _, o := range r.all("Certificate") {
		certs[o.Name] = o.Unstructured["spec"].(map[string]any)
	}
	if !v.TLS.Enabled || !v.TLS.CertManager.Enabled {
		if len(certs) != 0 {
			t.Errorf("%d Certificates rendered without tls.certManager", len(certs))
		}
	}
	if !v.TLS.Enabled {
		return
	}
	mountedBy := map[string]string{}
	want := 0
	for _, s := range grpcStages {
		sv := v.Stages[s]
		if !sv.Enabled {
			continue
		}
		want++
		n := rel + "-" + s
		d := r.find("Deployment", n).Typed.(*appsv1.Deployment)
		for _, vol := range d.Spec.Template.Spec.Volumes {
			if vol.Name == "tls" && vol.Secret != nil {
				if other, dup := mountedBy[vol.Secret.SecretName]; dup {
					t.Errorf("%s and %s mount the same TLS Secret %s: each stage needs its own identity", other, s, vol.Secret.SecretName)
				}
				mountedBy[vol.Secret.SecretName] = s
			}
		}
		if !v.TLS.CertManager.Enabled {
			continue
		}
		spec := certs[n]
		if spec == nil {
			t.Errorf("no Certificate %s for stage %s", n, s)
			continue
		}
		if got := spec["secretName"]; got != tlsSecretOf(n, sv) {
			t.Errorf("Certificate %s writes Secret %v, but the stage mounts %s", n, got, tlsSecretOf(n, sv))
		}
		if got, want := fmt.Sprint(spec["uris"]), fmt.Sprintf("[spiffe://%s/%s]", trustDomainOf(v), s); got != want {
			t.Errorf("Certificate %s URI SANs %s, want %s", n, got, want)
		}
		dialled := fmt.Sprintf("%s.%s.svc.cluster.local", n, ns)
		if !slices.Contains(toStrings(spec["dnsNames"]), dialled) {
			t.Errorf("Certificate %s DNS names %v lack %s, the name its callers dial", n, spec["dnsNames"], dialled)
		}
		usages := toStrings(spec["usages"])
		if !slices.Contains(usages, "server auth") || !slices.Contains(usages, "client auth") {
			t.Errorf("Certificate %s usages %v, want server auth and client auth", n, usages)
		}
		if got := fmt.Sprint(spec["issuerRef"]); got != fmt.Sprint(toAny(v.TLS.CertManager.IssuerRef)) {
			t.Errorf("Certificate %s issuerRef %s, want %v", n, got, v.TLS.CertManager.IssuerRef)
		}
	}
	if !v.TLS.CertManager.Enabled {
		return
	}
	if v.TLS.CertManager.Operator {
		want++
		spec := certs[rel+"-operator"]
		if spec == nil {
			t.Errorf("no Certificate %s-operator", rel)
		} else {
			if got, want := fmt.Sprint(spec["uris"]), fmt.Sprintf("[spiffe://%s/operator]", trustDomainOf(v)); got != want {
				t.Errorf("operator Certificate URI SANs %s, want %s", got, want)
			}
			if usages := toStrings(spec["usages"]); slices.Contains(usages, "server auth") || !slices.Contains(usages, "client auth") {
				t.Errorf("operator Certificate usages %v, want client auth only", usages)
			}
			if _, used := mountedBy[fmt.Sprint(spec["secretName"])]; used {
				t.Errorf("a stage mounts the operator's Secret %v", spec["secretName"])
			}
		}
	}
	if len(certs) != want {
		t.Errorf("%d Certificates rendered, want %d", len(certs), want)
	}
}

func toStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, e := range list {
		out = append(out, fmt.Sprint(e))
	}
	return out
}

func toAny(m map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// The gateway's replicas share one consumer: unless set, its MaxAckPending
// is every replica's batches in flight and the one each gathers next, for
// the most replicas that may run.
func TestGatewayAckPendingCoversEveryReplica(t *testing.T) {
	gateway := func(vals map[string]any) map[string]any {
		return vals["stages"].(map[string]any)["gateway"].(map[string]any)
	}
	tests := []struct {
		name string
		set  func(g map[string]any)
		want string
	}{
		{"default: 2 replicas x 500 x (8 + 1)", func(map[string]any) {}, "9000"},
		{"3 replicas, batches of 1000, 4 in flight and 1 gathered", func(g map[string]any) {
			g["replicas"] = 3
			g["config"].(map[string]any)["batch-size"] = 1000
			g["config"].(map[string]any)["concurrency"] = 4
		}, "15000"},
		{"autoscaled: the most replicas", func(g map[string]any) {
			g["autoscaling"] = map[string]any{"enabled": true, "minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70}
		}, "27000"},
		{"set: kept", func(g map[string]any) { g["config"].(map[string]any)["max-ack-pending"] = 777 }, "777"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vals := readValues(t, filepath.Join("testdata", "defaults.yaml"))
			if vals["stages"] == nil {
				vals["stages"] = map[string]any{}
			}
			st := vals["stages"].(map[string]any)
			if st["gateway"] == nil {
				st["gateway"] = map[string]any{}
			}
			if gateway(vals)["config"] == nil {
				gateway(vals)["config"] = map[string]any{}
			}
			tt.set(gateway(vals))
			r := mustRender(t, vals)
			cm := r.find("ConfigMap", stageName("gateway")).Typed.(*corev1.ConfigMap)
			if got := cm.Data["TELEMESH_MAX_ACK_PENDING"]; got != tt.want {
				t.Errorf("TELEMESH_MAX_ACK_PENDING=%q, want %s", got, tt.want)
			}
		})
	}
}
