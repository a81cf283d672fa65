{{/* Names, labels and shared snippets. Upstream-compatible names keep `helm upgrade` from upstream in place. */}}

{{- define "nvidia-device-plugin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nvidia-device-plugin.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "nvidia-device-plugin.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nvidia-device-plugin.selectorLabels" -}}
{{- if .Values.selectorLabelsOverride -}}
{{ toYaml .Values.selectorLabelsOverride }}
{{- else -}}
app.kubernetes.io/name: {{ include "nvidia-device-plugin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.labels" -}}
helm.sh/chart: {{ include "nvidia-device-plugin.chart" . }}
{{ include "nvidia-device-plugin.templateLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "nvidia-device-plugin.templateLabels" -}}
app.kubernetes.io/name: {{ include "nvidia-device-plugin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Values.selectorLabelsOverride }}
{{ toYaml .Values.selectorLabelsOverride }}
{{- end }}
{{- end -}}

{{- define "nvidia-device-plugin.fullimage" -}}
{{- $tag := printf "v%s" .Chart.AppVersion -}}
{{- .Values.image.repository -}}:{{- .Values.image.tag | default $tag -}}
{{- end -}}

{{- define "nvidia-device-plugin.serviceAccountName" -}}
{{ include "nvidia-device-plugin.fullname" . }}-service-account
{{- end -}}

{{/* A ConfigMap of named configs is in use: an external one, or one built from config.map. */}}
{{- define "nvidia-device-plugin.hasConfigMap" -}}
{{- if or .Values.config.name .Values.config.map -}}true{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.configMapName" -}}
{{- if .Values.config.name -}}
{{- .Values.config.name -}}
{{- else -}}
{{- include "nvidia-device-plugin.fullname" . }}-configs
{{- end -}}
{{- end -}}

{{/* MIG may be in play: a MIG strategy other than none, or unset while a config file may set one. */}}
{{- define "nvidia-device-plugin.migPossible" -}}
{{- if kindIs "string" .Values.migStrategy -}}
{{- if ne .Values.migStrategy "none" -}}true{{- end -}}
{{- else if include "nvidia-device-plugin.hasConfigMap" . -}}true
{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.requiresSysAdmin" -}}
{{- if include "nvidia-device-plugin.migPossible" . -}}true
{{- else if kindIs "string" .Values.deviceListStrategy -}}
{{- if contains "volume-mounts" .Values.deviceListStrategy -}}true{{- end -}}
{{- else if include "nvidia-device-plugin.hasConfigMap" . -}}true
{{- end -}}
{{- end -}}

{{/* Upstream's rules 3-4, tightened: the processes write only to mounted paths, so the root filesystem
     is read-only whenever the container is not privileged. */}}
{{- define "nvidia-device-plugin.restrictedSecurityContext" -}}
{{- if include "nvidia-device-plugin.requiresSysAdmin" . -}}
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  add: ["SYS_ADMIN"]
{{- else -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.securityContext" -}}
{{- if .Values.securityContext -}}
{{ toYaml .Values.securityContext }}
{{- else if .Values.compatWithCPUManager -}}
privileged: true
{{- else -}}
{{ include "nvidia-device-plugin.restrictedSecurityContext" . }}
{{- end -}}
{{- end -}}

{{- define "gpu-feature-discovery.securityContext" -}}
{{- if .Values.gfd.securityContext -}}
{{ toYaml .Values.gfd.securityContext }}
{{- else -}}
{{ include "nvidia-device-plugin.restrictedSecurityContext" . }}
{{- end -}}
{{- end -}}

{{/* Pod-level settings shared by every DaemonSet. */}}
{{- define "nvidia-device-plugin.podCommon" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "nvidia-device-plugin.serviceAccountName" . }}
securityContext:
{{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- /* The pods' nodeSelector: the chart's, merged over `extra` (the MPS daemon's own label). */ -}}
{{- define "nvidia-device-plugin.nodeSelector" -}}
{{- $selector := merge (deepCopy (default dict .root.Values.nodeSelector)) (default dict .extra) -}}
{{- with $selector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "nvidia-device-plugin.podAnnotations" -}}
{{- $annotations := deepCopy (default dict .root.Values.podAnnotations) -}}
{{- if and .root.Values.config.map (not (hasKey $annotations "checksum/config")) -}}
{{- $_ := set $annotations "checksum/config" (include (print .root.Template.BasePath "/configmap.yml") .root | sha256sum) -}}
{{- end -}}
{{- with $annotations }}
annotations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The config-manager init container (oneshot) or sidecar that selects the node's named config. */}}
{{- define "nvidia-device-plugin.configManager" -}}
- name: {{ .name }}
  image: {{ include "nvidia-device-plugin.fullimage" .root }}
  command: ["config-manager"]
  env:
  - name: ONESHOT
    value: {{ .oneshot | quote }}
  - name: KUBECONFIG
    value: ""
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
  - name: NODE_LABEL
    value: "nvidia.com/device-plugin.config"
  - name: CONFIG_FILE_SRCDIR
    value: "/available-configs"
  - name: CONFIG_FILE_DST
    value: "/config/config.yaml"
  - name: DEFAULT_CONFIG
    value: {{ .root.Values.config.default | quote }}
  - name: FALLBACK_STRATEGIES
    value: {{ join "," .root.Values.config.fallbackStrategies | quote }}
  - name: SEND_SIGNAL
    value: {{ not .oneshot | quote }}
  - name: SIGNAL
    value: {{ if .oneshot }}""{{ else }}"1"{{ end }}
  - name: PROCESS_TO_SIGNAL
    value: {{ if .oneshot }}""{{ else }}{{ .process | quote }}{{ end }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  volumeMounts:
  - name: available-configs
    mountPath: /available-configs
  - name: config
    mountPath: /config
{{- end -}}

{{/* Our opt-in /metrics and /healthz: env, container port and probes for one program.
     .component is .Values.devicePlugin or .Values.gfd; .env the program's address variable. */}}
{{- define "nvidia-device-plugin.metricsEnv" -}}
{{- with .config }}{{- if .enabled }}
- name: {{ $.env }}
  value: {{ printf "%s:%v" (.bindAddress | default "") .port | quote }}
{{- end }}{{- end }}
{{- end -}}

{{- /* The container's ports (its own metrics; the plugin's GPU telemetry too) and, for its own metrics
     bound to every interface, the probes. */ -}}
{{- define "nvidia-device-plugin.metricsPortsAndProbes" -}}
{{- $metrics := .metrics -}}
{{- $gpu := .gpuMetrics | default dict -}}
{{- if or $metrics.enabled $gpu.enabled }}
ports:
{{- if $metrics.enabled }}
- name: metrics
  containerPort: {{ $metrics.port }}
  protocol: TCP
{{- end }}
{{- if $gpu.enabled }}
- name: gpu-metrics
  containerPort: {{ $gpu.port }}
  protocol: TCP
{{- end }}
{{- end }}
{{- if and $metrics.enabled (not $metrics.bindAddress) }}
{{- /* The kubelet probes the pod IP: only an all-interfaces bind can answer. */}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 10
  periodSeconds: 30
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
{{- end }}
{{- end -}}

{{- define "nvidia-device-plugin.ownMetricsEnabled" -}}
{{- if or (and .Values.devicePlugin.enabled .Values.devicePlugin.metrics.enabled) (and .Values.gfd.enabled .Values.gfd.metrics.enabled) -}}true{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.gpuMetricsEnabled" -}}
{{- if and .Values.devicePlugin.enabled .Values.devicePlugin.gpuMetrics.enabled -}}true{{- end -}}
{{- end -}}
