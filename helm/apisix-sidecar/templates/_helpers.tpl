{{/*
Chart name, truncated to the 63 characters Kubernetes names allow.
*/}}
{{- define "apisix-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release name + chart name, unless the release name already contains the chart name.
*/}}
{{- define "apisix-sidecar.fullname" -}}
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

{{- define "apisix-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apisix-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apisix-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "apisix-sidecar.labels" -}}
helm.sh/chart: {{ include "apisix-sidecar.chart" . }}
{{ include "apisix-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "apisix-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apisix-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "apisix-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{/* Paths shared by the templates. */}}
{{- define "apisix-sidecar.runnerBin" -}}/opt/apisix-sidecar/venv/bin/apisix-sidecar{{- end }}
{{- define "apisix-sidecar.socketDir" -}}/run/apisix-sidecar{{- end }}
{{- define "apisix-sidecar.socketPath" -}}/run/apisix-sidecar/runner.sock{{- end }}
{{- define "apisix-sidecar.configMountPath" -}}/etc/apisix-sidecar{{- end }}

{{/* Name of the Secret with the admin key and the key inside it. */}}
{{- define "apisix-sidecar.adminSecretName" -}}
{{- default (printf "%s-admin" (include "apisix-sidecar.fullname" .)) .Values.admin.existingSecret }}
{{- end }}
{{- define "apisix-sidecar.adminSecretKey" -}}
{{- .Values.admin.existingSecretKey }}
{{- end }}

{{/*
Checks of value combinations the schema cannot express.
*/}}
{{- define "apisix-sidecar.validate" -}}
{{- if and .Values.admin.enabled (ne .Values.apisix.mode "traditional") }}
{{- fail "admin.enabled needs apisix.mode=traditional: in standalone mode APISIX runs as a data plane without Admin API" }}
{{- end }}
{{- with .Values.apisix.plugins }}
{{- if not (or (has "ext-plugin-pre-req" .) (has "ext-plugin-post-req" .) (has "ext-plugin-post-resp" .)) }}
{{- fail "apisix.plugins must contain ext-plugin-pre-req, ext-plugin-post-req or ext-plugin-post-resp, or the runner is never called" }}
{{- end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "APISIX_SIDECAR_DEPLOYMENT" "APISIX_STAND_ALONE") }}
{{- fail (printf "extraEnv must not set %s: the image entrypoint would replace the chart's config.yaml; use apisix.mode" .name) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.apisix.mode "traditional") (not .Values.apisix.etcd.hosts) }}
{{- fail "apisix.mode=traditional needs at least one apisix.etcd.hosts entry" }}
{{- end }}
{{- end }}

{{/*
Runner environment (log level, plugins, call timeout, extra env), as a list of EnvVar objects.
In bundled mode it goes to the gateway container and its names to nginx_config.envs (nginx
clears the environment of the processes it starts); in sidecar mode to the runner container.
*/}}
{{- define "apisix-sidecar.runnerEnv" -}}
- name: APISIX_SIDECAR_LOG_LEVEL
  value: {{ .Values.runner.logLevel | quote }}
- name: APISIX_SIDECAR_LOG_FORMAT
  value: {{ .Values.runner.logFormat | quote }}
{{- with .Values.runner.plugins }}
- name: APISIX_SIDECAR_PLUGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.runner.callTimeout) }}
- name: APISIX_SIDECAR_CALL_TIMEOUT
  value: {{ .Values.runner.callTimeout | toString | quote }}
{{- end }}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- with .Values.runner.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Environment of the apisix container: the admin key (traditional mode), the runner settings
(bundled mode) and extraEnv.
*/}}
{{- define "apisix-sidecar.gatewayEnv" -}}
{{- if eq .Values.apisix.mode "traditional" }}
- name: APISIX_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "apisix-sidecar.adminSecretName" . }}
      key: {{ include "apisix-sidecar.adminSecretKey" . }}
{{- end }}
{{- if eq .Values.runner.mode "bundled" }}
{{ include "apisix-sidecar.runnerEnv" . }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Names of the runner variables nginx must pass on (bundled mode).
*/}}
{{- define "apisix-sidecar.runnerEnvNames" -}}
{{- $names := list -}}
{{- range (include "apisix-sidecar.runnerEnv" . | fromYamlArray) }}
{{- $names = append $names .name -}}
{{- end }}
{{- toJson $names -}}
{{- end }}

{{/*
config.yaml of APISIX, as YAML. Built as a dict, merged with apisix.extraConfig and printed with
toYaml, which never writes anchors or aliases (APISIX's YAML loader rejects them).
*/}}
{{- define "apisix-sidecar.configYaml" -}}
{{- $v := .Values -}}
{{- $envs := list -}}
{{- if eq $v.runner.mode "bundled" }}
{{- $envs = concat $envs (include "apisix-sidecar.runnerEnvNames" . | fromJsonArray) -}}
{{- end }}
{{- if eq $v.apisix.mode "traditional" }}
{{- $envs = append $envs "APISIX_ADMIN_KEY" -}}
{{- end }}
{{- $envs = concat $envs $v.apisix.nginx.envs | uniq -}}
{{- $snippet := list
      "# nginx temp files go to the /tmp emptyDir (read-only root filesystem)"
      "client_body_temp_path /tmp/client_body_temp;"
      "proxy_temp_path /tmp/proxy_temp;"
      "fastcgi_temp_path /tmp/fastcgi_temp;"
      "uwsgi_temp_path /tmp/uwsgi_temp;"
      "scgi_temp_path /tmp/scgi_temp;" -}}
{{- with $v.apisix.nginx.httpConfigurationSnippet }}
{{- $snippet = append $snippet (trimSuffix "\n" .) -}}
{{- end }}
{{- $nginx := dict
      "worker_processes" $v.apisix.nginx.workerProcesses
      "error_log" "/dev/stderr"
      "error_log_level" $v.apisix.nginx.errorLogLevel
      "envs" $envs
      "http" (dict "access_log" "/dev/stdout")
      "http_configuration_snippet" (printf "%s\n" (join "\n" $snippet)) -}}
{{- $apisix := dict
      "node_listen" (list 9080)
      "enable_ipv6" $v.apisix.enableIPv6 -}}
{{- $deployment := dict -}}
{{- if eq $v.apisix.mode "standalone" }}
{{- $_ := set $deployment "role" "data_plane" -}}
{{- $_ := set $deployment "role_data_plane" (dict "config_provider" "yaml") -}}
{{- else }}
{{- $_ := set $deployment "role" "traditional" -}}
{{- $_ := set $deployment "role_traditional" (dict "config_provider" "etcd") -}}
{{- $_ := set $deployment "admin" (dict
      "admin_key_required" true
      "admin_key" (list (dict "name" "admin" "key" "${{APISIX_ADMIN_KEY}}" "role" "admin"))
      "allow_admin" $v.admin.allow
      "admin_listen" (dict "ip" "0.0.0.0" "port" 9180)) -}}
{{- $_ := set $deployment "etcd" (dict
      "host" $v.apisix.etcd.hosts
      "prefix" $v.apisix.etcd.prefix
      "timeout" $v.apisix.etcd.timeout) -}}
{{- end }}
{{- $ext := dict -}}
{{- if eq $v.runner.mode "bundled" }}
{{- $_ := set $ext "cmd" (list (include "apisix-sidecar.runnerBin" .) "run") -}}
{{- else }}
{{- $_ := set $ext "path_for_test" (include "apisix-sidecar.socketPath" .) -}}
{{- end }}
{{- $cfg := dict "apisix" $apisix "deployment" $deployment "nginx_config" $nginx "ext-plugin" $ext -}}
{{- with $v.apisix.plugins }}
{{- $_ := set $cfg "plugins" . -}}
{{- end }}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy $v.apisix.extraConfig) -}}
{{- toYaml $cfg }}
{{- end }}

{{/*
apisix.yaml (standalone mode): the objects from apisix.standalone; APISIX applies the file only
when it ends with #END.
*/}}
{{- define "apisix-sidecar.apisixYaml" -}}
{{- $out := dict -}}
{{- range $k, $items := .Values.apisix.standalone }}
{{- if $items }}
{{- $_ := set $out $k $items -}}
{{- end }}
{{- end }}
{{- if not (hasKey $out "routes") }}
{{- $_ := set $out "routes" (list) -}}
{{- end }}
{{- toYaml $out }}
#END
{{- end }}
