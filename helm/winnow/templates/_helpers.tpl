{{/* Names ------------------------------------------------------------------------------------- */}}
{{- define "winnow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "winnow.fullname" -}}
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

{{- define "winnow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: call with (dict "root" $ "component" "verifier") ---------------------------------- */}}
{{- define "winnow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "winnow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "winnow.labels" -}}
helm.sh/chart: {{ include "winnow.chart" .root }}
{{ include "winnow.selectorLabels" . }}
app.kubernetes.io/part-of: winnow
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "winnow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "winnow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image: call with (dict "root" $ "override" .Values.verifier.image) ------------------------- */}}
{{- define "winnow.image" -}}
{{- $img := mustMergeOverwrite (deepCopy .root.Values.image) (deepCopy (default (dict) .override)) }}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion ($img.tag | toString)) }}
{{- end }}

{{- define "winnow.imagePullPolicy" -}}
{{- $img := mustMergeOverwrite (deepCopy .root.Values.image) (deepCopy (default (dict) .override)) }}
{{- $img.pullPolicy }}
{{- end }}

{{/* Kafka ------------------------------------------------------------------------------------- */}}
{{- define "winnow.kafkaBootstrap" -}}
{{- required "kafka.bootstrapServers is required: the host:port list of your Kafka cluster, e.g. --set kafka.bootstrapServers=my-kafka-kafka-bootstrap.kafka.svc:9092 (the chart runs no Kafka: see helm show readme)" .Values.kafka.bootstrapServers }}
{{- end }}

{{/* Verifier addresses and auth ------------------------------------------------------------- */}}
{{/* gRPC target of a verifier Service: dns:/// over the headless Service, so the client resolves every
     ready pod and round_robin spreads the calls. Call with (dict "root" $ "service" "<name>" "port" N). */}}
{{- define "winnow.grpcTarget" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" .service .root.Release.Namespace .root.Values.clusterDomain (int .port) }}
{{- end }}

{{- define "winnow.verifierAddress" -}}
{{- include "winnow.grpcTarget" (dict "root" . "service" (printf "%s-verifier" (include "winnow.fullname" .)) "port" .Values.verifier.grpcPort) }}
{{- end }}

{{- define "winnow.verifierSecretName" -}}
{{- if .Values.verifier.auth.existingSecret }}
{{- .Values.verifier.auth.existingSecret }}
{{- else }}
{{- printf "%s-verifier-token" (include "winnow.fullname" .) }}
{{- end }}
{{- end }}

{{- define "winnow.verifierSecretKey" -}}
{{- if .Values.verifier.auth.existingSecret }}{{ .Values.verifier.auth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Env var holding the verifier token: call with (dict "root" $ "name" "WINNOW_VERIFIER_TOKEN") */}}
{{- define "winnow.verifierTokenEnv" -}}
{{- if .root.Values.verifier.auth.enabled }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "winnow.verifierSecretName" .root }}
      key: {{ include "winnow.verifierSecretKey" .root }}
{{- end }}
{{- end }}

{{/* Env common to learner and generators ----------------------------------------------------- */}}
{{- define "winnow.kafkaEnv" -}}
{{- $sec := .Values.kafka.security }}
{{- $sasl := hasPrefix "SASL_" $sec.protocol }}
{{- $tls := or (eq $sec.protocol "SSL") (eq $sec.protocol "SASL_SSL") }}
{{- if and $sasl (not $sec.sasl.mechanism) }}
{{- fail (printf "kafka.security.protocol is %s: set kafka.security.sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)" $sec.protocol) }}
{{- end }}
{{- if and $sec.sasl.mechanism (not $sasl) }}
{{- fail "kafka.security.sasl.mechanism is set: kafka.security.protocol must be SASL_SSL or SASL_PLAINTEXT" }}
{{- end }}
{{- $oauth := eq $sec.sasl.mechanism "OAUTHBEARER" }}
{{- if and $sasl (not $oauth) (not $sec.sasl.existingSecret) }}
{{- fail (printf "kafka.security.sasl.mechanism %s needs kafka.security.sasl.existingSecret (a Secret with the user's password)" $sec.sasl.mechanism) }}
{{- end }}
{{- if and $sasl $oauth (not $sec.sasl.oauthTokenSecret) }}
{{- fail "kafka.security.sasl.mechanism OAUTHBEARER needs kafka.security.sasl.oauthTokenSecret" }}
{{- end }}
{{- if and (not $tls) (or $sec.tls.caSecret $sec.tls.clientSecret) }}
{{- fail (printf "kafka.security.tls secrets are set but kafka.security.protocol is %s: use SSL or SASL_SSL" $sec.protocol) }}
{{- end }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ include "winnow.kafkaBootstrap" . | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $sec.protocol | quote }}
{{- if $sasl }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $sec.sasl.mechanism | quote }}
{{- if $oauth }}
- name: KAFKA_SASL_OAUTH_TOKEN_FILE
  value: /etc/winnow/kafka/oauth/{{ $sec.sasl.oauthTokenKey }}
{{- else }}
{{- if $sec.sasl.username }}
- name: KAFKA_SASL_USERNAME
  value: {{ $sec.sasl.username | quote }}
{{- else }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $sec.sasl.existingSecret }}
      key: {{ $sec.sasl.usernameKey }}
{{- end }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $sec.sasl.existingSecret }}
      key: {{ $sec.sasl.passwordKey }}
{{- end }}
{{- end }}
{{- if $sec.tls.caSecret }}
- name: KAFKA_SSL_CAFILE
  value: /etc/winnow/kafka/ca/{{ $sec.tls.caKey }}
{{- end }}
{{- if $sec.tls.clientSecret }}
- name: KAFKA_SSL_CERTFILE
  value: /etc/winnow/kafka/client/{{ $sec.tls.certKey }}
- name: KAFKA_SSL_KEYFILE
  value: /etc/winnow/kafka/client/{{ $sec.tls.keyKey }}
{{- end }}
{{- end }}

{{/* Volumes and mounts of the Kafka TLS / OAUTHBEARER Secrets (empty when none is configured) */}}
{{- define "winnow.kafkaVolumes" -}}
{{- $sec := .Values.kafka.security }}
{{- if $sec.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ $sec.tls.caSecret }}
{{- end }}
{{- if $sec.tls.clientSecret }}
- name: kafka-client
  secret:
    secretName: {{ $sec.tls.clientSecret }}
{{- end }}
{{- if and (hasPrefix "SASL_" $sec.protocol) (eq $sec.sasl.mechanism "OAUTHBEARER") }}
- name: kafka-oauth
  secret:
    secretName: {{ $sec.sasl.oauthTokenSecret }}
{{- end }}
{{- end }}

{{- define "winnow.kafkaMounts" -}}
{{- $sec := .Values.kafka.security }}
{{- if $sec.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/winnow/kafka/ca
  readOnly: true
{{- end }}
{{- if $sec.tls.clientSecret }}
- name: kafka-client
  mountPath: /etc/winnow/kafka/client
  readOnly: true
{{- end }}
{{- if and (hasPrefix "SASL_" $sec.protocol) (eq $sec.sasl.mechanism "OAUTHBEARER") }}
- name: kafka-oauth
  mountPath: /etc/winnow/kafka/oauth
  readOnly: true
{{- end }}
{{- end }}

{{- define "winnow.cacheEnv" -}}
- name: HOME
  value: /home/winnow
- name: HF_HOME
  value: /home/winnow/.cache/huggingface
- name: XDG_CACHE_HOME
  value: /home/winnow/.cache
- name: TMPDIR
  value: /tmp
- name: TRITON_CACHE_DIR
  value: /home/winnow/.cache/triton
- name: VLLM_CONFIG_ROOT
  value: /home/winnow/.cache/vllm-config
- name: VLLM_NO_USAGE_STATS
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* Scratch volumes: /tmp and the cache dir (emptyDir), optional /dev/shm ----------------------- */}}
{{- define "winnow.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.scratchSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ .root.Values.scratchSizeLimit }}
{{- if .shm }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}
{{- end }}

{{- define "winnow.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/winnow
{{- if .shm }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- end }}

{{/* Resources with an optional GPU: call with (dict "resources" ... "gpu" ...) ---------------- */}}
{{- define "winnow.resources" -}}
{{- $res := deepCopy (default (dict) .resources) }}
{{- if .gpu.enabled }}
{{- $limits := default (dict) $res.limits }}
{{- $_ := set $limits .gpu.resourceName (int .gpu.count) }}
{{- $_ := set $res "limits" $limits }}
{{- $requests := default (dict) $res.requests }}
{{- $_ := set $requests .gpu.resourceName (int .gpu.count) }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Service configs (the ConfigMaps): chart-owned keys, then the user's `config` over them ----- */}}
{{- define "winnow.verifierConfig" -}}
{{- $base := dict "host" "0.0.0.0" "port" (int .Values.verifier.grpcPort) "metrics_port" (int .Values.verifier.metricsPort) }}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.verifier.config)) }}
{{- end }}

{{/* Task pattern -> custom verifier address (GeneratorConfig.verifier.endpoints). Helm writes map keys
     sorted, so keep the patterns of different custom verifiers disjoint. */}}
{{- define "winnow.verifierEndpoints" -}}
{{- $root := . }}
{{- $eps := dict }}
{{- range .Values.verifier.extra }}
{{- $addr := include "winnow.grpcTarget" (dict "root" $root "service" (printf "%s-verifier-%s" (include "winnow.fullname" $root) .name) "port" (default 50051 .port)) }}
{{- range .tasks }}
{{- if hasKey $eps . }}
{{- fail (printf "verifier.extra: task pattern %q is routed to two custom verifiers" .) }}
{{- end }}
{{- $_ := set $eps . $addr }}
{{- end }}
{{- end }}
{{- toYaml $eps }}
{{- end }}

{{/* The shared sections every service reads (winnow.config.SHARED_SECTIONS), from the top-level values, once. */}}
{{- define "winnow.sharedConfig" -}}
{{- $shared := dict "kafka" (dict "topic_prefix" .Values.kafka.topicPrefix) }}
{{- with .Values.model }}{{ $_ := set $shared "model" . }}{{ end }}
{{- with .Values.chat }}{{ $_ := set $shared "chat" (deepCopy .) }}{{ end }}
{{- with .Values.sampling }}{{ $_ := set $shared "sampling" (deepCopy .) }}{{ end }}
{{- with .Values.numerics }}{{ $_ := set $shared "numerics" (deepCopy .) }}{{ end }}
{{- toYaml $shared }}
{{- end }}

{{/* A service's `config` must not set a shared setting: each ConfigMap is read alone, so a per-service value
     would silently disagree with the other services'. Args: dict "config" <the block> "where" "<its values key>". */}}
{{- define "winnow.noSharedKeys" -}}
{{- range $key := list "model" "chat" "sampling" "numerics" }}
{{- if hasKey $.config $key }}
{{- fail (printf "%s.%s: set it once, as the top-level value `%s` (the learner and every generator read it; a value for one service would disagree with the others')" $.where $key $key) }}
{{- end }}
{{- end }}
{{- if and (kindIs "map" (get .config "kafka")) (hasKey (get .config "kafka") "topic_prefix") }}
{{- fail (printf "%s.kafka.topic_prefix: set it once, as the top-level value `kafka.topicPrefix`" .where) }}
{{- end }}
{{- end }}

{{- define "winnow.generatorConfig" -}}
{{- include "winnow.noSharedKeys" (dict "config" .Values.generator.config "where" "generator.config") }}
{{- $verifier := dict "endpoints" (include "winnow.verifierEndpoints" . | fromYaml) }}
{{- if .Values.verifier.enabled }}
{{- $_ := set $verifier "default_endpoint" (include "winnow.verifierAddress" .) }}
{{- end }}
{{- $base := dict "metrics_port" (int .Values.generator.metricsPort) "metrics_host" "0.0.0.0" "verifier" $verifier "weights" (dict "root" .Values.weights.mountPath) }}
{{- $out := include "winnow.sharedConfig" . | fromYaml }}
{{- $_ := set $out "generator" (mustMergeOverwrite $base (deepCopy .Values.generator.config)) }}
{{- toYaml $out }}
{{- end }}

{{- define "winnow.learnerConfig" -}}
{{- if or (hasKey .Values.learner.config "false") (hasKey .Values.learner.config "true") }}
{{- fail "learner.config has a key that YAML read as a boolean: write the group size as \"n\": 8 (a bare n or y is false/true in Helm's YAML)" }}
{{- end }}
{{- $wm := .Values.weights.mountPath }}
{{- include "winnow.noSharedKeys" (dict "config" .Values.learner.config "where" "learner.config") }}
{{- $base := dict "metrics_port" (int .Values.learner.metricsPort) "metrics_host" "0.0.0.0" "algo" (dict "preset" .Values.learner.algorithm) "on_finish" .Values.learner.onFinish }}
{{- $_ := set $base "weights" (dict "dir" $wm "uri_root" $wm) }}
{{- $_ := set $base "checkpoint" (dict "dir" "/checkpoints/checkpoints") }}
{{- $_ := set $base "run_dir" "/checkpoints/run" }}
{{- $out := include "winnow.sharedConfig" . | fromYaml }}
{{- $_ := set $out "learner" (mustMergeOverwrite $base (deepCopy .Values.learner.config)) }}
{{- toYaml $out }}
{{- end }}

{{- define "winnow.weightsClaim" -}}
{{- default (printf "%s-weights" (include "winnow.fullname" .)) .Values.weights.persistence.existingClaim }}
{{- end }}

{{/* The sharded learner ---------------------------------------------------------------------- */}}
{{/* "true" when the learner runs under torchrun: several nodes, or several GPUs in its pod. */}}
{{- define "winnow.learnerTorchrun" -}}
{{- $l := .Values.learner }}
{{- if or (gt (int $l.nodes) 1) (and $l.gpu.enabled (gt (int $l.gpu.count) 1)) }}true{{ end }}
{{- end }}

{{- define "winnow.learnerRendezvousPort" -}}29400{{- end }}

{{/* torchrun's rendezvous: pod 0's stable DNS name through the learner's headless Service. Pod 0 also
     holds global rank 0 (c10d ranks nodes in the sorted order of their host names). */}}
{{- define "winnow.learnerRendezvousEndpoint" -}}
{{- $svc := printf "%s-learner" (include "winnow.fullname" .) }}
{{- printf "%s-0.%s.%s.svc.%s:%s" $svc $svc .Release.Namespace .Values.clusterDomain (include "winnow.learnerRendezvousPort" .) }}
{{- end }}

{{/* The checkpoint claim shared by every learner pod; "" = one per pod (volumeClaimTemplates). */}}
{{- define "winnow.learnerCheckpointsClaim" -}}
{{- $c := .Values.learner.checkpoints }}
{{- if $c.existingClaim }}
{{- $c.existingClaim }}
{{- else if gt (int .Values.learner.nodes) 1 }}
{{- if not (has "ReadWriteMany" $c.accessModes) }}
{{- fail (printf "learner.nodes is %d: every learner rank writes its shard of each checkpoint under one path, so the checkpoint volume must be shared; learner.checkpoints.accessModes is %s (one volume per pod): set learner.checkpoints.accessModes to [ReadWriteMany] (with a learner.checkpoints.storageClassName that provides it: NFS, CephFS, EFS, Filestore, Azure Files...) or learner.checkpoints.existingClaim to a ReadWriteMany claim" (int .Values.learner.nodes) (toJson $c.accessModes)) }}
{{- end }}
{{- printf "%s-learner-checkpoints" (include "winnow.fullname" .) }}
{{- end }}
{{- end }}

{{/* Env WINNOW_GROUP_HMAC_KEY of the learner and the generators, from kafka.groupHmacSecret. */}}
{{- define "winnow.groupHmacEnv" -}}
{{- with .Values.kafka.groupHmacSecret }}
{{- if .name }}
- name: WINNOW_GROUP_HMAC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}
