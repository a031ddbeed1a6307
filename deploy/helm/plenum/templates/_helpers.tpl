{{/* Names: <release>-plenum, or the release name when it already says plenum. */}}
{{- define "plenum.fullname" -}}
{{- if contains "plenum" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-plenum" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: plenum.name (dict "root" $ "component" "ocr"). */}}
{{- define "plenum.name" -}}
{{- printf "%s-%s" (include "plenum.fullname" .root) .component -}}
{{- end -}}

{{- define "plenum.selectorLabels" -}}
app.kubernetes.io/name: plenum
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "plenum.labels" -}}
{{ include "plenum.selectorLabels" . }}
app.kubernetes.io/part-of: plenum
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* registry/repository:tag, or @digest when one is given. */}}
{{- define "plenum.image" -}}
{{- $defaults := .root.Values.imageDefaults -}}
{{- $repository := .image.repository -}}
{{- if $defaults.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $defaults.registry) $repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default $defaults.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "plenum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "plenum.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "plenum.tokenSecretName" -}}
{{- .Values.broker.token.existingSecret | default (printf "%s-broker-token" (include "plenum.fullname" .)) -}}
{{- end -}}

{{- define "plenum.hasToken" -}}
{{- if or .Values.broker.token.existingSecret .Values.broker.token.value -}}true{{- end -}}
{{- end -}}

{{/* Where the broker listens and where its holders dial: per brokerAccess.mode. */}}
{{- define "plenum.socketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.brokerAccess.socketDir) .Values.brokerAccess.socketName -}}
{{- end -}}

{{- define "plenum.brokerListen" -}}
{{- if eq .Values.brokerAccess.mode "socket" -}}
unix://{{ include "plenum.socketPath" . }}
{{- else -}}
0.0.0.0:{{ .Values.broker.port }}
{{- end -}}
{{- end -}}

{{- define "plenum.brokerUrl" -}}
{{- $mode := .Values.brokerAccess.mode -}}
{{- if eq $mode "socket" -}}
unix://{{ include "plenum.socketPath" . }}
{{- else if eq $mode "localService" -}}
http://{{ include "plenum.name" (dict "root" . "component" "broker-local") }}.{{ .Release.Namespace }}.svc:{{ .Values.broker.port }}
{{- else -}}
http://$(HOST_IP):{{ .Values.broker.port }}
{{- end -}}
{{- end -}}

{{/* Holders share the host's PID namespace only where their own PID must match NVML's. */}}
{{- define "plenum.holderHostPID" -}}
{{- if and .Values.gpu.enabled (ne .Values.brokerAccess.mode "socket") .Values.brokerAccess.holderHostPID -}}true{{- end -}}
{{- end -}}

{{/* Where the node's pods run: the component's own settings, else the GPU nodes'. */}}
{{- define "plenum.placement" -}}
{{- $values := .values -}}
{{- $gpu := .root.Values.gpu -}}
{{- $nodeSelector := $values.nodeSelector | default (ternary $gpu.nodeSelector dict (and $gpu.enabled .onGpuNodes)) -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := $values.tolerations | default (ternary $gpu.tolerations list (and $gpu.enabled .onGpuNodes)) -}}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The downward API: which pod, node and host this is. */}}
{{- define "plenum.downwardEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end -}}

{{/* Logs, and traces when otlp.enabled; the resource attributes name pod and node. */}}
{{- define "plenum.telemetryEnv" -}}
- name: PLENUM_LOG
  value: {{ .Values.log.filter | quote }}
- name: PLENUM_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- if .Values.otlp.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otlp.endpoint | quote }}
# One attribute a line; the SDK trims the spaces folding leaves after each comma.
- name: OTEL_RESOURCE_ATTRIBUTES
  value: >-
    k8s.namespace.name=$(POD_NAMESPACE),
    k8s.pod.name=$(POD_NAME),
    k8s.node.name=$(NODE_NAME)
    {{- with .Values.otlp.resourceAttributes }},
    {{ . }}
    {{- end }}
{{- with .Values.otlp.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "plenum.tokenEnv" -}}
{{- if include "plenum.hasToken" . }}
- name: PLENUM_BROKER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "plenum.tokenSecretName" . }}
      key: {{ .Values.broker.token.key }}
{{- end }}
{{- end -}}

{{/* The seconds a pod may take to stop: the preStop pause, the drain, and a margin. */}}
{{- define "plenum.gracePeriod" -}}
{{- add (.preStopSleepSeconds | default 0) .drainTimeoutSeconds 5 -}}
{{- end -}}

{{- define "plenum.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* A backend's headless Service as the gateway dials it (gateway.backendScheme). */}}
{{- define "plenum.backendUrl" -}}
{{- printf "%s://%s.%s.svc:%v" .root.Values.gateway.backendScheme (include "plenum.name" .) .root.Release.Namespace .port -}}
{{- end -}}
