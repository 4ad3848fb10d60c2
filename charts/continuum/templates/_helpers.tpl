{{/*
Naming and labels, after `helm create`.
*/}}
{{- define "continuum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "continuum.fullname" -}}
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

{{- define "continuum.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "continuum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "continuum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object; "continuum.labels" adds the selector labels of the operator. */}}
{{- define "continuum.baseLabels" -}}
helm.sh/chart: {{ include "continuum.chart" . }}
app.kubernetes.io/name: {{ include "continuum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: continuum
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "continuum.labels" -}}
{{ include "continuum.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "continuum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "continuum.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] with the appVersion as the default tag. */}}
{{- define "continuum.imageRef" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "continuum.image" -}}
{{- include "continuum.imageRef" (dict "root" . "image" .Values.image) }}
{{- end }}

{{- define "continuum.workerImage" -}}
{{- include "continuum.imageRef" (dict "root" . "image" .Values.worker.image) }}
{{- end }}

{{/* "true" when kopf peering is on: several replicas, or asked for. */}}
{{- define "continuum.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "continuum.peeringName" -}}
{{- default (include "continuum.fullname" .) .Values.peering.name }}
{{- end }}

{{/* "true" when the operator serves only .Values.operator.watchNamespaces (namespaced RBAC). */}}
{{- define "continuum.namespaced" -}}
{{- if .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/* The namespaces that get a Role: the watched ones (namespaced mode only). */}}
{{- define "continuum.watchNamespaces" -}}
{{- join "," .Values.operator.watchNamespaces }}
{{- end }}
