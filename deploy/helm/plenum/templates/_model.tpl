{{/*
A model service's Deployment: plenum.modelDeployment (dict "root" $ "component" "ocr"
"values" .Values.ocr "binary" "plenum-ocr" "service" "plenum.ocr.v1.Ocr" "flags" list).
*/}}
{{- define "plenum.modelDeployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $values := $root.Values -}}
{{- $socket := eq $values.brokerAccess.mode "socket" -}}
{{- $models := $values.models -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "plenum.name" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "plenum.labels" . | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  selector:
    matchLabels:
      {{- include "plenum.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "plenum.labels" . | nindent 8 }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "plenum.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- if $values.gpu.enabled }}
      runtimeClassName: {{ $values.gpu.runtimeClassName }}
      {{- end }}
      {{- if include "plenum.holderHostPID" $root }}
      # The PID this holder reports to the broker must be the one NVML sees.
      hostPID: true
      {{- end }}
      # Stop: the preStop pause lets endpoints and the gateway's DNS forget this pod,
      # then SIGTERM starts the drain (NOT_SERVING, in-flight calls finish).
      terminationGracePeriodSeconds: {{ include "plenum.gracePeriod" $v }}
      {{- include "plenum.podSecurity" $root | nindent 6 }}
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- /* Model pods go where brokers are: the GPU nodes. */}}
      {{- with include "plenum.placement" (dict "root" $root "values" $v "onGpuNodes" true) | trim }}{{ . | nindent 6 }}{{ end }}
      {{- if eq $models.source "image" }}
      initContainers:
        # The images carry no models: copy them from the models image.
        - name: models
          image: {{ include "plenum.image" (dict "root" $root "image" $models.image) }}
          imagePullPolicy: {{ $values.imageDefaults.pullPolicy }}
          command: [cp, -R, /models/., /provisioned/]
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          resources:
            requests:
              cpu: 50m
              memory: 32Mi
            limits:
              memory: 64Mi
          volumeMounts:
            - name: models
              mountPath: /provisioned
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "plenum.image" (dict "root" $root "image" $v.image) }}
          imagePullPolicy: {{ $values.imageDefaults.pullPolicy }}
          args:
            - --listen=0.0.0.0:{{ $v.port }}
            - --metrics-listen=0.0.0.0:{{ $v.metricsPort }}
            - --drain-timeout={{ $v.drainTimeoutSeconds }}s
            - --broker={{ include "plenum.brokerUrl" $root }}
            - --models=/models
            - --device={{ $v.device | default (ternary "cuda" "sim-gpu" $values.gpu.enabled) }}
            - --intra-op-threads={{ $v.intraOpThreads }}
            {{- range .flags }}
            - {{ . }}
            {{- end }}
            {{- with $v.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            {{- include "plenum.downwardEnv" $root | nindent 12 }}
            {{- with include "plenum.telemetryEnv" $root | trim }}{{ . | nindent 12 }}{{ end }}
            {{- with include "plenum.tokenEnv" $root | trim }}{{ . | nindent 12 }}{{ end }}
            {{- if and $values.gpu.enabled (eq $values.gpu.modelAccess "visibleDevices") }}
            - name: NVIDIA_VISIBLE_DEVICES
              value: all
            - name: NVIDIA_DRIVER_CAPABILITIES
              value: compute,utility
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $v.port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
          # SERVING only once the models are loaded and warm: up to
          # periodSeconds x failureThreshold for that.
          startupProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: {{ $v.startupProbe.periodSeconds }}
            failureThreshold: {{ $v.startupProbe.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $v.port }}
              service: {{ .service }}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $v.preStopSleepSeconds }}
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          {{- $resources := deepCopy $v.resources }}
          {{- $extended := dict }}
          {{- if $values.vramScheduling.enabled }}
          {{- $_ := set $extended $values.vramScheduling.resourceName ($v.vramMiB | toString) }}
          {{- end }}
          {{- if and $values.gpu.enabled (eq $values.gpu.modelAccess "resource") }}
          {{- $_ := set $extended $values.gpu.resourceName "1" }}
          {{- end }}
          {{- if $extended }}
          {{- /* Extended resources: requests must equal limits. */}}
          {{- $_ := set $resources "requests" (merge (deepCopy $extended) ($resources.requests | default dict)) }}
          {{- $_ := set $resources "limits" (merge (deepCopy $extended) ($resources.limits | default dict)) }}
          {{- end }}
          resources:
            {{- toYaml $resources | nindent 12 }}
          volumeMounts:
            - name: models
              mountPath: /models
              readOnly: true
            # libtorch may write scratch files; the root filesystem is read-only.
            - name: tmp
              mountPath: /tmp
            {{- if $socket }}
            - name: broker-socket
              mountPath: {{ $values.brokerAccess.socketDir }}
              readOnly: true
            {{- end }}
      volumes:
        - name: models
          {{- if eq $models.source "image" }}
          emptyDir:
            sizeLimit: {{ $models.sizeLimit }}
          {{- else if eq $models.source "hostPath" }}
          hostPath:
            path: {{ $models.hostPath }}
            type: Directory
          {{- else }}
          persistentVolumeClaim:
            claimName: {{ required "models.existingClaim is required with models.source=persistentVolumeClaim" $models.existingClaim }}
            readOnly: true
          {{- end }}
        - name: tmp
          emptyDir:
            sizeLimit: 1Gi
        {{- if $socket }}
        # The node's broker socket: the same host folder as the broker's, so a pod can
        # only ever reach the broker of the node it runs on.
        - name: broker-socket
          hostPath:
            path: {{ $values.brokerAccess.socketDir }}
            type: DirectoryOrCreate
        {{- end }}
{{- end -}}
