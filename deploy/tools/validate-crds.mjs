// Validates the custom resources in rendered manifests against their CRD schemas, using the
// @kubernetes-models packages (KEDA, Prometheus Operator), plus stricter checks those schemas
// leave out (unknown keys, the Kafka trigger's metadata). Run by deploy/check.sh:
//   node validate-crds.mjs docs.json [docs.json ...]   (each file: a JSON array of objects)
// Exits 1 on any problem. Core kinds are left to kubernetes-validate.
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

// The CRD schemas accept unknown fields (no additionalProperties: false), so a misspelt key
// would pass silently and be dropped by the API server. These are the keys KEDA 2.x documents.
const allowed = {
  "ScaledObject.spec": ["scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"],
  "ScaledObject.spec.scaleTargetRef": ["apiVersion", "kind", "name", "envSourceContainerName"],
  "ScaledObject.spec.fallback": ["failureThreshold", "replicas", "behavior"],
  "ScaledObject.spec.advanced": ["restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"],
  "ScaledObject.spec.advanced.horizontalPodAutoscalerConfig": ["name", "behavior"],
  "ScaledObject.spec.advanced.horizontalPodAutoscalerConfig.behavior": ["scaleUp", "scaleDown"],
  "trigger": ["type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"],
  "kafka.metadata": ["bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv",
    "topic", "topicFromEnv", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "version",
    "partitionLimitation", "sasl", "tls", "unsafeSsl", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "saslTokenProvider", "awsRegion", "awsEndpoint"],
  "TriggerAuthentication.spec": ["secretTargetRef", "env", "configMapTargetRef", "podIdentity",
    "hashiCorpVault", "azureKeyVault", "awsSecretManager", "gcpSecretManager", "boundServiceAccountToken"],
  "kafka.auth": ["sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword",
    "oauthTokenEndpointUri", "scopes", "oauthExtensions", "awsRegion"],
};

const errors = [];
const fail = (where, msg) => errors.push(`${where}: ${msg}`);

function onlyKeys(where, obj, key) {
  if (obj === undefined || obj === null) return;
  for (const k of Object.keys(obj)) {
    if (!allowed[key].includes(k)) fail(where, `unknown key ${JSON.stringify(k)} (allowed: ${allowed[key].join(", ")})`);
  }
}

const isIntString = (v) => typeof v === "string" && /^[0-9]+$/.test(v);

function checkScaledObject(where, o) {
  const s = o.spec || {};
  onlyKeys(where + " spec", s, "ScaledObject.spec");
  onlyKeys(where + " spec.scaleTargetRef", s.scaleTargetRef, "ScaledObject.spec.scaleTargetRef");
  onlyKeys(where + " spec.fallback", s.fallback, "ScaledObject.spec.fallback");
  onlyKeys(where + " spec.advanced", s.advanced, "ScaledObject.spec.advanced");
  const hpa = s.advanced?.horizontalPodAutoscalerConfig;
  onlyKeys(where + " spec.advanced.horizontalPodAutoscalerConfig", hpa, "ScaledObject.spec.advanced.horizontalPodAutoscalerConfig");
  onlyKeys(where + " ...horizontalPodAutoscalerConfig.behavior", hpa?.behavior, "ScaledObject.spec.advanced.horizontalPodAutoscalerConfig.behavior");
  const min = s.minReplicaCount ?? 0, max = s.maxReplicaCount ?? 100;
  if (min > max) fail(where, `minReplicaCount ${min} > maxReplicaCount ${max}`);
  if (hpa?.behavior?.scaleDown?.stabilizationWindowSeconds === undefined)
    fail(where, "advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds is not set");
  for (const [i, t] of (s.triggers || []).entries()) {
    const tw = `${where} triggers[${i}]`;
    onlyKeys(tw, t, "trigger");
    if (t.type !== "kafka") continue;
    const m = t.metadata || {};
    onlyKeys(tw + ".metadata", m, "kafka.metadata");
    for (const [k, v] of Object.entries(m)) {
      if (typeof v !== "string") fail(tw, `metadata.${k} must be a string (KEDA metadata is map[string]string)`);
    }
    for (const k of ["bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold"]) {
      if (!(k in m)) fail(tw, `metadata.${k} is missing`);
    }
    for (const k of ["lagThreshold", "activationLagThreshold"]) {
      if (k in m && !isIntString(m[k])) fail(tw, `metadata.${k} must be a whole number, got ${JSON.stringify(m[k])}`);
    }
    if (isIntString(m.lagThreshold) && Number(m.lagThreshold) <= 0) fail(tw, "metadata.lagThreshold must be > 0");
    if ("offsetResetPolicy" in m && !["earliest", "latest"].includes(m.offsetResetPolicy))
      fail(tw, `metadata.offsetResetPolicy must be earliest or latest`);
    for (const k of ["allowIdleConsumers", "excludePersistentLag", "limitToPartitionsWithLag", "scaleToZeroOnInvalidOffset"]) {
      if (k in m && !["true", "false"].includes(m[k])) fail(tw, `metadata.${k} must be "true" or "false"`);
    }
    if ("sasl" in m && !["none", "plaintext", "scram_sha256", "scram_sha512", "oauthbearer", "gssapi"].includes(m.sasl))
      fail(tw, `metadata.sasl ${JSON.stringify(m.sasl)} is not a KEDA SASL mode`);
    if ("tls" in m && !["enable", "disable"].includes(m.tls)) fail(tw, `metadata.tls must be enable or disable`);
  }
}

function checkTriggerAuthentication(where, o) {
  const s = o.spec || {};
  onlyKeys(where + " spec", s, "TriggerAuthentication.spec");
  for (const [i, r] of (s.secretTargetRef || []).entries()) {
    if (!allowed["kafka.auth"].includes(r.parameter))
      fail(`${where} secretTargetRef[${i}]`, `parameter ${JSON.stringify(r.parameter)} is not a Kafka scaler auth parameter`);
  }
}

const builtinGroups = /^(apps|batch|policy|autoscaling|networking\.k8s\.io|rbac\.authorization\.k8s\.io|scheduling\.k8s\.io|storage\.k8s\.io|coordination\.k8s\.io|node\.k8s\.io)\//;

let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = JSON.parse(readFileSync(file, "utf8"));
  for (const o of docs) {
    const group = (o.apiVersion || "").includes("/") ? o.apiVersion : null;
    if (!group) continue; // core/v1 kinds: kubernetes-validate's job
    const key = `${o.apiVersion}/${o.kind}`;
    const where = `${file.replace(/.*\//, "")} ${o.kind}/${o.metadata?.name}`;
    const Model = models[key];
    if (!Model) {
      // Built-in API groups are validated by kubernetes-validate; a custom group must be known.
      if (!builtinGroups.test(o.apiVersion)) fail(where, `no schema for custom resource ${key}: add its model to validate-crds.mjs`);
      continue;
    }
    try {
      new Model(o).validate();
    } catch (e) {
      fail(where, `schema: ${e.message}`);
    }
    if (o.kind === "ScaledObject") checkScaledObject(where, o);
    if (o.kind === "TriggerAuthentication") checkTriggerAuthentication(where, o);
    checked++;
  }
}
for (const e of errors) console.error("ERROR " + e);
console.log(`custom resources: ${checked} checked, ${errors.length} problem(s)`);
process.exit(errors.length ? 1 : 0);
