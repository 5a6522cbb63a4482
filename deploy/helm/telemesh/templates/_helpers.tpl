{{/*
The chart's name, for the app.kubernetes.io/name label.
*/}}
{{- define "telemesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object: the release name (or fullnameOverride). Objects
are named <fullname>-<stage>; 50 characters leave room for the longest
suffix within the 63 a DNS label allows.
*/}}
{{- define "telemesh.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "telemesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "telemesh.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | replace "+" "_" | replace ":" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "telemesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The topology of the pipeline, as the binary has it (internal/app NextHops):
which stages each stage calls, which speak HTTP rather than gRPC, which
connect to NATS. It is not a value: the code decides it.
*/}}
{{- define "telemesh.topology" -}}
gateway:
  protocol: grpc
  calls: [validator]
  nats: true
validator:
  protocol: grpc
  calls: [deriver, persister]
  nats: false
deriver:
  protocol: grpc
  calls: [persister]
  nats: false
persister:
  protocol: grpc
  calls: [publisher]
  nats: false
publisher:
  protocol: grpc
  calls: []
  nats: true
viewer:
  protocol: http
  calls: []
  nats: true
{{- end -}}

{{/*
Labels. Context: the root, or a dict with root and name (the stage).
*/}}
{{- define "telemesh.labels" -}}
{{- $root := .root | default . -}}
helm.sh/chart: {{ include "telemesh.chart" $root }}
{{ include "telemesh.selectorLabels" . }}
app.kubernetes.io/version: {{ include "telemesh.version" $root | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: telemesh
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "telemesh.selectorLabels" -}}
{{- $root := .root | default . -}}
app.kubernetes.io/name: {{ include "telemesh.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- with .name }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "telemesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "telemesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The name of the chart-managed Secret that holds the secret values given in
values (rendered only when at least one is given).
*/}}
{{- define "telemesh.secretName" -}}
{{- printf "%s-secrets" (include "telemesh.fullname" .) -}}
{{- end -}}

{{/*
The data of the chart-managed Secret as a YAML map of key: plain value. Empty
when no secret value is given.
*/}}
{{- define "telemesh.secretData" -}}
{{- $v := .Values -}}
{{- $data := dict -}}
{{- if $v.database.url.value }}{{ $_ := set $data "database-url" $v.database.url.value }}{{ end -}}
{{- if $v.nats.url.value }}{{ $_ := set $data "nats-url" $v.nats.url.value }}{{ end -}}
{{- if $v.nats.password.value }}{{ $_ := set $data "nats-password" $v.nats.password.value }}{{ end -}}
{{- if $v.nats.token.value }}{{ $_ := set $data "nats-token" $v.nats.token.value }}{{ end -}}
{{- if $v.nats.credentials.value }}{{ $_ := set $data "nats.creds" $v.nats.credentials.value }}{{ end -}}
{{- if $v.viewer.token.value }}{{ $_ := set $data "viewer-token" $v.viewer.token.value }}{{ end -}}
{{- range $name, $stage := $v.stages -}}
{{- if and $stage.enabled $stage.databaseUrl -}}
{{- if $stage.databaseUrl.value }}{{ $_ := set $data (printf "database-url-%s" $name) $stage.databaseUrl.value }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if $data }}{{ toYaml $data }}{{ end -}}
{{- end -}}

{{/*
One env entry reading a secret reference. Context: dict with root, env (the
variable), ref ({existingSecret, key, value}), managedKey (the key in the
chart-managed Secret when ref.value is set) and optionally managedName.
Renders nothing when the reference names no Secret and has no value.
*/}}
{{- define "telemesh.secretEnv" -}}
{{- $ref := .ref | default dict -}}
{{- if $ref.value }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .managedName | default (include "telemesh.secretName" .root) }}
      key: {{ .managedKey }}
{{- else if $ref.existingSecret }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.existingSecret }}
      key: {{ required (printf "a key is required for Secret %s (%s)" $ref.existingSecret .env) $ref.key }}
{{- end }}
{{- end -}}

{{/*
A Kubernetes object name for a stage: <fullname>-<stage>.
*/}}
{{- define "telemesh.stageName" -}}
{{- printf "%s-%s" (include "telemesh.fullname" .root) .name -}}
{{- end -}}

{{/*
The gRPC target of a stage as its callers dial it: round_robin over the pod
IPs of its headless Service.
*/}}
{{- define "telemesh.target" -}}
{{- $stage := index .root.Values.stages .name -}}
{{- printf "dns:///%s.%s.svc.%s:%v" (include "telemesh.stageName" .) .root.Release.Namespace .root.Values.clusterDomain (int $stage.port) -}}
{{- end -}}

{{/*
A value for an environment variable: strings as they are, whole numbers
without an exponent (YAML numbers arrive as float64), the rest printed.
*/}}
{{- define "telemesh.envValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
The ConfigMap data of a stage (non-secret settings as TELEMESH_* variables).
Context: dict with root, name, stage, topo (the stage's topology entry).
*/}}
{{- define "telemesh.configData" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $data := dict -}}
{{- $_ := set $data "TELEMESH_LISTEN" (printf ":%v" (int $stage.port)) -}}
{{- $_ := set $data "TELEMESH_ADMIN_LISTEN" (printf ":%v" (int $stage.adminPort)) -}}
{{- $_ := set $data "TELEMESH_SHUTDOWN_GRACE" (printf "%vs" (int (include "telemesh.graceSeconds" .))) -}}
{{- if and $root.Values.tls.enabled (eq .topo.protocol "grpc") -}}
{{- $_ := set $data "TELEMESH_HEALTH_LISTEN" (printf ":%v" (int $root.Values.tls.healthPort)) -}}
{{- $_ := set $data "TELEMESH_TLS_TRUST_DOMAIN" (include "telemesh.trustDomain" $root) -}}
{{- end -}}
{{- if and .topo.nats $root.Values.nats.user -}}
{{- $_ := set $data "TELEMESH_NATS_USER" $root.Values.nats.user -}}
{{- end -}}
{{- $config := merge (deepCopy ($stage.config | default dict)) (deepCopy ($root.Values.config | default dict)) -}}
{{- range $k, $v := $config -}}
{{- $_ := set $data (printf "TELEMESH_%s" ($k | upper | replace "-" "_")) (include "telemesh.envValue" $v) -}}
{{- end -}}
{{- /* Every gateway replica shares one consumer, whose MaxAckPending bounds
what all of them hold together: unless set, it is each replica's batches in
flight and the one it gathers next, times the replicas (the most the
autoscaler may run). */ -}}
{{- if and (eq .name "gateway") (not (hasKey $config "max-ack-pending")) -}}
{{- $replicas := int $stage.replicas -}}
{{- if and $stage.autoscaling $stage.autoscaling.enabled -}}
{{- $replicas = int $stage.autoscaling.maxReplicas -}}
{{- end -}}
{{- $batch := int (get $config "batch-size" | default 500) -}}
{{- $inFlight := int (get $config "concurrency" | default 8) -}}
{{- $_ := set $data "TELEMESH_MAX_ACK_PENDING" (printf "%d" (mul (max $replicas 1) $batch (add $inFlight 1))) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/*
The shutdown grace of a stage in seconds.
*/}}
{{- define "telemesh.graceSeconds" -}}
{{- if .stage.shutdownGraceSeconds -}}
{{- int .stage.shutdownGraceSeconds -}}
{{- else -}}
{{- int .root.Values.shutdown.graceSeconds -}}
{{- end -}}
{{- end -}}

{{/*
The Postgres URL reference a stage uses: its own databaseUrl when it names a
Secret or a value, else database.url.
*/}}
{{- define "telemesh.databaseEnv" -}}
{{- $own := .stage.databaseUrl | default dict -}}
{{- $global := .root.Values.database.url -}}
{{- if not (or $own.existingSecret $own.value $global.existingSecret $global.value) -}}
{{- fail (printf "stages.%s needs a Postgres URL: set database.url.existingSecret (or stages.%s.databaseUrl)" .name .name) -}}
{{- end -}}
{{- if or $own.existingSecret $own.value -}}
{{- include "telemesh.secretEnv" (dict "root" .root "env" "TELEMESH_DATABASE_URL" "ref" $own "managedKey" (printf "database-url-%s" .name)) -}}
{{- else -}}
{{- include "telemesh.secretEnv" (dict "root" .root "env" "TELEMESH_DATABASE_URL" "ref" .root.Values.database.url "managedKey" "database-url") -}}
{{- end -}}
{{- end -}}

{{/*
The NATS credentials file volume source: the existing Secret or the
chart-managed one; empty when no credentials are configured.
*/}}
{{- define "telemesh.natsCredsSecret" -}}
{{- $c := .Values.nats.credentials -}}
{{- if $c.value -}}
{{- include "telemesh.secretName" . -}}|nats.creds
{{- else if $c.existingSecret -}}
{{- $c.existingSecret -}}|{{ $c.key }}
{{- end -}}
{{- end -}}

{{/*
The trust domain of the stages' identities.
*/}}
{{- define "telemesh.trustDomain" -}}
{{- .Values.tls.trustDomain | default "telemesh" -}}
{{- end -}}

{{/*
The Secret holding a stage's own certificate (ca.crt, tls.crt, tls.key).
Context: dict with root, name, stage.
*/}}
{{- define "telemesh.tlsSecretName" -}}
{{- .stage.tlsSecret | default (printf "%s-tls" (include "telemesh.stageName" .)) -}}
{{- end -}}

{{/*
The identity a stage's certificate carries: its URI SAN. Context: dict with
root and name.
*/}}
{{- define "telemesh.identity" -}}
{{- printf "spiffe://%s/%s" (include "telemesh.trustDomain" .root) .name -}}
{{- end -}}
