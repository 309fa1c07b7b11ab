{{/*
The chart name, or nameOverride. Kubernetes names are limited to 63 characters.
*/}}
{{- define "quorate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name of the release's objects: fullnameOverride, else "<release>-<name>",
or just the release name when it already contains the chart name (release "quorate" ->
"quorate"). Also the name of the leader-election Lease.
*/}}
{{- define "quorate.fullname" -}}
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

{{/*
The helm.sh/chart label value: "<chart>-<version>".
*/}}
{{- define "quorate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable), so they hold
no version.
*/}}
{{/* The selector labels as key=value,... (the operator's --operator-pod-labels). */}}
{{- define "quorate.selectorLabelList" -}}
{{- $pairs := list -}}
{{- range $k, $v := (include "quorate.selectorLabels" . | fromYaml) -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end }}

{{- define "quorate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quorate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The standard labels on every object of the release.
*/}}
{{- define "quorate.labels" -}}
helm.sh/chart: {{ include "quorate.chart" . }}
{{ include "quorate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quorate
{{- end }}

{{/*
The operator's ServiceAccount. Without serviceAccount.create the name must be given: binding
the operator's cluster-wide rights to the namespace's "default" account would hand them to
every pod that runs under it.
*/}}
{{- define "quorate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quorate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false (the operator must not run as the namespace's default ServiceAccount)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "quorate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The agent image the operator injects into member pods. Each part defaults to the operator's:
the agent and the operator ship in one image and speak one protocol version.
*/}}
{{- define "quorate.agentImage" -}}
{{- $repository := .Values.agent.image.repository | default .Values.image.repository }}
{{- $tag := .Values.agent.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{- define "quorate.agentImagePullPolicy" -}}
{{- .Values.agent.image.pullPolicy | default .Values.image.pullPolicy }}
{{- end }}
