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

{{/* The DRA driver may enforce memory shares with MPS: dra.shareEnforcement is mps, or unset while a per-node
     config file may set it (flags.dra.shareEnforcement). */}}
{{- define "nvidia-device-plugin.draMpsPossible" -}}
{{- $enforcement := .Values.dra.shareEnforcement -}}
{{- if eq (toString $enforcement) "mps" -}}true
{{- else if and (not $enforcement) (include "nvidia-device-plugin.hasConfigMap" .) -}}true
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

{{- define "nvidia-device-plugin.draServiceAccountName" -}}
{{ include "nvidia-device-plugin.fullname" . }}-dra-service-account
{{- end -}}

{{/* Pod-level settings shared by every DaemonSet. .driver says which node-level GPU driver the pods are
     ("device-plugin", "dra", or "" for GFD, which labels every GPU node): it picks the ServiceAccount and
     the node requirement that keeps the two drivers off each other's nodes. */}}
{{- define "nvidia-device-plugin.podCommon" -}}
{{- $root := .root -}}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- if eq .driver "dra" }}
serviceAccountName: {{ include "nvidia-device-plugin.draServiceAccountName" $root }}
{{- else }}
serviceAccountName: {{ include "nvidia-device-plugin.serviceAccountName" $root }}
{{- end }}
securityContext:
{{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- include "nvidia-device-plugin.affinity" . }}
{{- with $root.Values.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The node requirement of a driver's pods, as YAML (empty: none). One driver per node: with both drivers
     on, DRA runs where the node label says "true" and the device plugin everywhere else; with DRA alone, it
     runs everywhere but where the label says "false" (the GPU Operator's meaning of its deploy labels). */}}
{{- define "nvidia-device-plugin.driverRequirement" -}}
{{- $values := .root.Values -}}
{{- if and $values.dra.enabled $values.dra.nodeLabel -}}
{{- if eq .driver "dra" }}
key: {{ $values.dra.nodeLabel | quote }}
{{- if $values.devicePlugin.enabled }}
operator: In
values: ["true"]
{{- else }}
operator: NotIn
values: ["false"]
{{- end }}
{{- else if and (eq .driver "device-plugin") $values.devicePlugin.enabled }}
key: {{ $values.dra.nodeLabel | quote }}
operator: NotIn
values: ["true"]
{{- end }}
{{- end }}
{{- end -}}

{{/* The chart's affinity with the driver's node requirement added to every node selector term (terms are
     OR-ed, expressions in a term AND-ed), or alone when the chart has none. */}}
{{- define "nvidia-device-plugin.affinity" -}}
{{- $affinity := deepCopy (default dict .root.Values.affinity) -}}
{{- $requirement := include "nvidia-device-plugin.driverRequirement" . | fromYaml -}}
{{- if $requirement -}}
{{- $nodeAffinity := default dict (get $affinity "nodeAffinity") -}}
{{- $required := default dict (get $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution") -}}
{{- $terms := list -}}
{{- range (default (list dict) (get $required "nodeSelectorTerms")) -}}
{{- $term := deepCopy . -}}
{{- $_ := set $term "matchExpressions" (append (default list (get $term "matchExpressions")) $requirement) -}}
{{- $terms = append $terms $term -}}
{{- end -}}
{{- $_ := set $required "nodeSelectorTerms" $terms -}}
{{- $_ := set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required -}}
{{- $_ := set $affinity "nodeAffinity" $nodeAffinity -}}
{{- end -}}
{{- with $affinity }}
affinity:
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
{{- if or (and .Values.devicePlugin.enabled .Values.devicePlugin.metrics.enabled) (and .Values.gfd.enabled .Values.gfd.metrics.enabled) (and .Values.dra.enabled .Values.dra.metrics.enabled) -}}true{{- end -}}
{{- end -}}

{{- define "nvidia-device-plugin.gpuMetricsEnabled" -}}
{{- if or (and .Values.devicePlugin.enabled .Values.devicePlugin.gpuMetrics.enabled) (and .Values.dra.enabled .Values.dra.gpuMetrics.enabled) -}}true{{- end -}}
{{- end -}}

{{- /* The DRA driver's sharing settings as env, for the driver and for GFD's memory-shares labels (one source). */}}
{{- define "nvidia-device-plugin.draSharingEnv" -}}
{{- $dra := .Values.dra }}
{{- with $dra.consumableShares }}
- name: CONSUMABLE_SHARES
  value: {{ . | quote }}
{{- end }}
{{- with $dra.featureGates }}
- name: FEATURE_GATES
  value: {{ $gates := list }}{{ range $name, $on := . }}{{ $gates = append $gates (printf "%s=%t" $name $on) }}{{ end }}{{ join "," $gates | quote }}
{{- end }}
{{- with $dra.shareEnforcement }}
- name: SHARE_ENFORCEMENT
  value: {{ . | quote }}
{{- end }}
{{- end }}
