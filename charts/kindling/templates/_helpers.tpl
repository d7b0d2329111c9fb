{{/*
The names every template shares (issue 13's contract): fullname is the release name when it contains "kindling",
else "<release>-kindling"; the Services are <fullname>-api, -controller, -router, -redis.
*/}}
{{- define "kindling.fullname" -}}
{{- if contains "kindling" .Release.Name -}}
{{- .Release.Name -}}
{{- else -}}
{{- printf "%s-kindling" .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "kindling.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* KINDLING_PLATFORM_ID: the same for every controller replica. */}}
{{- define "kindling.platformId" -}}
{{- default .Release.Name .Values.platformId -}}
{{- end -}}

{{/* KINDLING_KUBE_NAMESPACE: where the functions' pods live. */}}
{{- define "kindling.functionsNamespace" -}}
{{- default .Release.Namespace .Values.functionsNamespace -}}
{{- end -}}

{{- define "kindling.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kindling.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) -}}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "kindling.labels" -}}
app.kubernetes.io/name: kindling
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "kindling.chart" .ctx }}
{{- end -}}

{{/* The selector of a component's pods (a subset of its labels that never changes across upgrades). */}}
{{- define "kindling.selectorLabels" -}}
app.kubernetes.io/name: kindling
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* `key=value` of a role's one label (KINDLING_KUBE_RUNTIME_NODES / _QUARANTINE_NODES). */}}
{{- define "kindling.roleSelector" -}}
{{- range $k, $v := .labels -}}{{ $k }}={{ $v }}{{- end -}}
{{- end -}}

{{/* A toleration of a taint (a dict with key, value, effect), as a list item. */}}
{{- define "kindling.toleration" -}}
- key: {{ .key | quote }}
  operator: Equal
  value: {{ .value | default "" | quote }}
  effect: {{ .effect | quote }}
{{- end -}}

{{/*
Pod annotations: the values' plus the checksums that roll the pods when the ConfigMap or the Secret changes. The
Secret's is of the values it is made from: a generated token is kept across upgrades, and hashing the rendered Secret
would hash a fresh random one at every render.
*/}}
{{- define "kindling.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ list .Values.apiToken .Values.agentToken .Values.executorToken .Values.redis.enabled .Values.redis.externalUrl | toJson | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The security context of a non-root container (controller, router). */}}
{{- define "kindling.containerSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A token of the Secret: the value, else the one the installed Secret holds (lookup), else a new random one. */}}
{{- define "kindling.token" -}}
{{- if .value -}}
{{- .value -}}
{{- else if and .existing (index .existing .key) -}}
{{- index .existing .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/*
What the schema cannot say, checked with `fail` (each message names the value to change).
*/}}
{{- define "kindling.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.externalUrl) -}}
{{- fail "redis.enabled is false but redis.externalUrl is empty: set redis.externalUrl to your Redis (redis://host:6379 or rediss://...) or set redis.enabled true" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.externalUrl -}}
{{- fail "redis.externalUrl is set while redis.enabled is true: set redis.enabled false to use your own Redis, or empty redis.externalUrl" -}}
{{- end -}}
{{- if gt (len (include "kindling.fullname" .)) 42 -}}
{{- fail (printf "the release name %q makes names longer than a Service name may be: use a release name of at most 33 characters" .Release.Name) -}}
{{- end -}}
{{- range $role := list "runtime" "quarantine" -}}
{{- $r := index $.Values.nodes $role -}}
{{- if ne (len $r.labels) 1 -}}
{{- fail (printf "nodes.%s.labels must hold exactly one label (it is KINDLING_KUBE_%s_NODES, key=value)" $role (upper $role)) -}}
{{- end -}}
{{- with $r.taint -}}
{{- $want := include "kindling.roleSelector" $r -}}
{{- if or (ne (printf "%s=%s" .key (.value | default "")) $want) (ne .effect "NoSchedule") -}}
{{- fail (printf "nodes.%s.taint must be %s:NoSchedule, the label of the role (the functions' pods tolerate exactly that), not %s=%s:%s" $role $want .key (.value | default "") .effect) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $owned := list "KINDLING_BACKEND" "KINDLING_STORE" "KINDLING_HOST" "KINDLING_PORT" "KINDLING_DATA_DIR" "KINDLING_LOG_LEVEL" "KINDLING_ROLE" "KINDLING_KUBE_NAMESPACE" "KINDLING_KUBE_RUNTIME_IMAGE" "KINDLING_KUBE_RUNTIME_NODES" "KINDLING_KUBE_QUARANTINE_NODES" "KINDLING_KUBE_CODE_LISTEN" "KINDLING_KUBE_CODE_HOST" "KINDLING_EXECUTOR_URL" "KINDLING_EXECUTOR_PORT" "KINDLING_PLATFORM_ID" "KINDLING_LEADER_LEASE" "KINDLING_AGENT_PORT" "KINDLING_AGENT_SELECTOR" "KINDLING_API_TOKEN" "KINDLING_REDIS_URL" "KINDLING_AGENT_TOKEN" "KINDLING_EXECUTOR_TOKEN" "KINDLING_NODE_NAME" "KINDLING_POD_IP" "KINDLING_KUBECONFIG" -}}
{{- range $k, $_ := .Values.config -}}
{{- if has $k $owned -}}
{{- fail (printf "config.%s is set by the chart itself: change the value it comes from (see values.yaml) instead" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
