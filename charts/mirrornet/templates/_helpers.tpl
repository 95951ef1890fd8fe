{{/* Names, labels and the checks values.schema.json cannot express. */}}

{{- define "mirrornet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped prefix of every object; cluster-scoped RBAC names carry it too. */}}
{{- define "mirrornet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mirrornet.operator" -}}
{{- printf "%s-operator" (include "mirrornet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirrornet.agent" -}}
{{- printf "%s-agent" (include "mirrornet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirrornet.leaseName" -}}
{{- default (include "mirrornet.operator" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "mirrornet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mirrornet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mirrornet.operatorSelector" -}}
app.kubernetes.io/name: {{ include "mirrornet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mirrornet.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "mirrornet.agentImage" -}}
{{- printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) }}
{{- end }}

{{/*
The name of the DaemonSet the operator creates (operator/src/daemonset.rs, NAME); the
operator's RBAC on DaemonSets is limited to it. charts/tests/test_chart.py checks they agree.
*/}}
{{- define "mirrornet.agentDaemonSet" -}}
mirrornet-agent
{{- end }}

{{/*
Range checks the schema's patterns cannot make: 0 < FIRST <= LAST, zones fit in 16 bits, rule
priorities stay below the l3mdev rule at 1000, tables avoid the kernel's 253-255 (the mark
mask's contiguity is checked by the operator alone). The operator makes the same checks at start;
failing here stops a bad install before a pod crash-loops on it.
*/}}
{{- define "mirrornet.checkRange" -}}
{{- $parts := splitList "-" .value }}
{{- $first := index $parts 0 | atoi }}
{{- $last := index $parts 1 | atoi }}
{{- if lt $first 1 }}
{{- fail (printf "ids.%s: must start above 0" .key) }}
{{- end }}
{{- if gt $first $last }}
{{- fail (printf "ids.%s: %d is above %d (FIRST-LAST)" .key $first $last) }}
{{- end }}
{{- if and .max (gt $last (int .max)) }}
{{- fail (printf "ids.%s: %d is above %d, %s" .key $last (int .max) .why) }}
{{- end }}
{{- end }}

{{- define "mirrornet.checkValues" -}}
{{- include "mirrornet.checkRange" (dict "key" "tableRange" "value" .Values.ids.tableRange "max" 0 "why" "") }}
{{- $tables := splitList "-" .Values.ids.tableRange }}
{{- if and (le (index $tables 0 | atoi) 255) (ge (index $tables 1 | atoi) 253) }}
{{- fail "ids.tableRange: must not include the kernel's tables 253-255 (default, main, local)" }}
{{- end }}
{{- include "mirrornet.checkRange" (dict "key" "zoneRange" "value" .Values.ids.zoneRange "max" 65535 "why" "the largest conntrack zone") }}
{{- include "mirrornet.checkRange" (dict "key" "rulePriorityRange" "value" .Values.ids.rulePriorityRange "max" 999 "why" "rules must stay below the l3mdev rule at 1000") }}
{{- end }}
