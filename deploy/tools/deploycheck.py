#!/usr/bin/env python3
"""Glue and cross-file checks for deploy/check.sh (runs in .ci-cache/deploy-venv: needs PyYAML).

  deploycheck.py split RENDERED.yaml OUT_PREFIX
      writes OUT_PREFIX.core.yaml (built-in kinds, for kubernetes-validate) and OUT_PREFIX.json
      (all objects, for validate-crds.mjs)
  deploycheck.py consistency REPO RENDERED_DIR
      checks that the files agree with each other and with the worker's code: TOML keys and
      environment variables exist in crates/worker/src/config/table.rs, KEDA's trigger reads the topic
      and group the worker consumes, replicas <= partitions, the drain fits the grace period,
      metric names exist in crates/worker/src/metrics.rs, the Dockerfile and the manifests agree
      on paths, and example Secrets hold placeholders only.
  deploycheck.py promql REPO OUT_RULES.yaml
      writes every PromQL expression of the Grafana dashboard and the prometheus-adapter rule as a
      Prometheus rules file, so that `promtool check rules` parses them.

Exits 1 with one line per problem.
"""
import glob
import json
import os
import re
import sys
import tomllib

import yaml

PARTITIONS = 12  # ocr.requests: deploy/compose.yaml kafka-init, deploy/docs/production.md
BUILTIN = re.compile(r"^(v1|(apps|batch|policy|autoscaling|networking\.k8s\.io|rbac\.authorization\.k8s\.io"
                     r"|scheduling\.k8s\.io|storage\.k8s\.io|coordination\.k8s\.io|node\.k8s\.io)/.+)$")
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, prefix):
    docs = load_all(rendered)
    core = [d for d in docs if BUILTIN.match(d.get("apiVersion", ""))]
    with open(prefix + ".core.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(docs, f)
    print(f"{os.path.basename(rendered)}: {len(docs)} objects ({len(core)} built-in kinds)")


# ---------------------------------------------------------------------------------------------
def worker_settings(repo):
    """(flags, envs) of `ocrfleet worker`, read from the settings! table in config/table.rs, plus every
    OCRFLEET_* name the CLI declares."""
    src = open(os.path.join(repo, "crates/worker/src/config/table.rs"), encoding="utf-8").read()
    rows = re.findall(r'^\s*\w+\s*:\s*[^;]+?,\s*"([a-z0-9-]+)",\s*"(OCRFLEET_[A-Z0-9_]+)",\s*"[^"]*";',
                      src, re.M)
    if len(rows) < 20:
        problem("crates/worker/src/config/table.rs", f"found only {len(rows)} settings rows; has the settings! table changed?")
    flags = {r[0] for r in rows}
    envs = {r[1] for r in rows}
    for path in glob.glob(os.path.join(repo, "crates/**/*.rs"), recursive=True):
        envs |= set(re.findall(r'"(OCRFLEET_[A-Z0-9_]+)"', open(path, encoding="utf-8").read()))
    return flags, envs


def metric_names(repo):
    """Every metric name the worker registers (metrics.rs, plus health.rs's component metrics)."""
    names = set()
    for f in ("metrics.rs", "health.rs"):
        src = open(os.path.join(repo, "crates/worker/src", f), encoding="utf-8").read()
        names |= set(re.findall(r'"(ocrfleet_[a-z0-9_]+)"', src))
    return names


def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(s).strip())
    if not m:
        return None
    n, u = int(m.group(1)), m.group(2)
    return n / 1000 if u == "ms" else n * (60 if u == "m" else 1)


def env_map(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_rendered(repo, name, docs, flags, envs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    w = f"rendered {name}"
    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        problem(w, f"expected one Deployment, found {len(deps)}")
        return
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_map(c)
    for n in env:
        if n.startswith("OCRFLEET_") and n not in envs:
            problem(w, f"environment variable {n} is not read by ocrfleet (crates/)")
    # The TOML file from the ConfigMap.
    cms = [d for d in by_kind.get("ConfigMap", []) if "ocrfleet.toml" in d.get("data", {})]
    if len(cms) != 1:
        problem(w, "expected one ConfigMap with ocrfleet.toml")
        return
    cfg = tomllib.loads(cms[0]["data"]["ocrfleet.toml"])
    for k in cfg:
        if k not in flags:
            problem(w, f"ocrfleet.toml key {k!r} is not a worker setting (config/table.rs settings!)")
    vol = {v["name"]: v for v in pod.get("volumes", [])}
    cfg_vol = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/etc/ocrfleet/ocrfleet.toml"]
    if not cfg_vol or vol.get(cfg_vol[0]["name"], {}).get("configMap", {}).get("name") != cms[0]["metadata"]["name"]:
        problem(w, "/etc/ocrfleet/ocrfleet.toml is not mounted from the ocrfleet.toml ConfigMap")
    if c.get("args", [])[:3] != ["worker", "--config", "/etc/ocrfleet/ocrfleet.toml"]:
        problem(w, "container args must be: worker --config /etc/ocrfleet/ocrfleet.toml")
    # Effective settings: environment over file.
    eff = {
        "brokers": env.get("OCRFLEET_KAFKA_BROKERS") or cfg.get("brokers"),
        "topic": env.get("OCRFLEET_KAFKA_TOPIC") or cfg.get("topic", "ocr.requests"),
        "group": env.get("OCRFLEET_KAFKA_GROUP") or cfg.get("group", "ocrfleet"),
        "grace": env.get("OCRFLEET_SHUTDOWN_GRACE") or cfg.get("shutdown-grace", "30s"),
        "http": env.get("OCRFLEET_HTTP_ADDR") or cfg.get("http-addr", "0.0.0.0:9464"),
        "device": env.get("OCRFLEET_DEVICE") or cfg.get("device", "cpu"),
    }
    # Ports and probes.
    port = int(eff["http"].rsplit(":", 1)[1])
    http = [p for p in c.get("ports", []) if p.get("name") == "http"]
    if not http or http[0]["containerPort"] != port:
        problem(w, f"container port 'http' must be {port} (http-addr)")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") != "http":
            problem(w, f"{probe} must GET {path} on port http")
    # Drain: preStop sleep + worker grace + margin within terminationGracePeriodSeconds.
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "/bin/sleep" else None
    if sleep is None:
        problem(w, "preStop must be [/bin/sleep, N]")
        sleep = 0
    grace = seconds(eff["grace"])
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if grace is None or tgps < sleep + grace + 10:
        problem(w, f"terminationGracePeriodSeconds {tgps} < preStop {sleep}s + shutdown grace {eff['grace']} + 10s")
    # Security context.
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    want = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    for k, v in want.items():
        if sc.get(k) != v:
            problem(w, f"container securityContext.{k} must be {v}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem(w, "container must drop ALL capabilities")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(w, "pod seccompProfile must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        problem(w, "pod must not mount a service account token")
    if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
        problem(w, "/tmp must be a writable volume (read-only root file system)")
    if not pod.get("topologySpreadConstraints"):
        problem(w, "topologySpreadConstraints missing")
    if "replicas" in dep["spec"]:
        problem(w, "Deployment must not set replicas (the autoscaler owns them)")
    # Variant: image tag, device, GPU request.
    gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    image = c["image"]
    if image.endswith("-gpu"):
        if str(gpus) != "1" or str(c["resources"].get("requests", {}).get("nvidia.com/gpu")) != "1":
            problem(w, "GPU image: request and limit exactly one nvidia.com/gpu (one pod per GPU)")
        if not str(eff["device"]).startswith("cuda"):
            problem(w, "GPU image: OCRFLEET_DEVICE must be cuda or cuda:N")
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            problem(w, "GPU pod must tolerate the nvidia.com/gpu taint")
    elif image.endswith("-cpu"):
        if gpus is not None or eff["device"] != "cpu":
            problem(w, "CPU image: no GPU request, OCRFLEET_DEVICE=cpu")
    else:
        problem(w, f"image {image!r} must be tagged ...-gpu or ...-cpu")
    for key in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in c.get("resources", {}).get(key, {}):
                problem(w, f"resources.{key}.{r} missing")
    # Service, ServiceMonitor, PDB, NetworkPolicy select the pods and use the named port.
    labels = dep["spec"]["template"]["metadata"]["labels"]

    def selects(sel):
        return sel and all(labels.get(k) == v for k, v in sel.items())
    for kind, sel_of in (("Service", lambda d: d["spec"].get("selector")),
                         ("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"]),
                         ("NetworkPolicy", lambda d: d["spec"]["podSelector"]["matchLabels"])):
        objs = by_kind.get(kind, [])
        if not objs or not all(selects(sel_of(o)) for o in objs):
            problem(w, f"{kind} missing or not selecting the worker pods")
    svc = by_kind.get("Service", [{}])[0]
    if not any(p.get("name") == "http" and p.get("targetPort") == "http" for p in svc.get("spec", {}).get("ports", [])):
        problem(w, "Service must expose port 'http' -> targetPort http")
    # The ServiceMonitor is an optional component (k8s/components/prometheus-operator): the
    # overlays must apply on a cluster without its CRD, and the example uses it.
    sm = by_kind.get("ServiceMonitor", [])
    if (name == "gpu-sasl-tls.yaml") != bool(sm):
        problem(w, "a ServiceMonitor belongs in the example only (the overlays must apply without the Prometheus Operator)")
    if sm and (sm[0]["spec"]["endpoints"][0].get("port") != "http" or sm[0]["spec"]["endpoints"][0].get("path") != "/metrics"):
        problem(w, "ServiceMonitor must scrape port http, path /metrics")
    elif sm and not all(svc["metadata"]["labels"].get(k) == v for k, v in sm[0]["spec"]["selector"]["matchLabels"].items()):
        problem(w, "ServiceMonitor selector does not match the Service's labels")
    np_ = by_kind.get("NetworkPolicy", [{}])[0].get("spec", {})
    ing_ports = [p.get("port") for r in np_.get("ingress", []) for p in r.get("ports", [])]
    if ing_ports != ["http"]:
        problem(w, f"NetworkPolicy ingress must allow only the metrics port (got {ing_ports})")
    eg_ports = {p.get("port") for r in np_.get("egress", []) for p in r.get("ports", [])}
    for p in (53, 9200, 443):
        if p not in eg_ports:
            problem(w, f"NetworkPolicy egress lacks port {p}")
    broker_port = int(str(eff["brokers"]).split(",")[0].rsplit(":", 1)[1])
    if broker_port not in eg_ports:
        problem(w, f"NetworkPolicy egress lacks the Kafka port {broker_port}")
    sa = by_kind.get("ServiceAccount", [{}])[0]
    if sa.get("automountServiceAccountToken") is not False or pod.get("serviceAccountName") != sa.get("metadata", {}).get("name"):
        problem(w, "ServiceAccount with automountServiceAccountToken: false must be the pod's")
    # Autoscaler.
    sos, hpas = by_kind.get("ScaledObject", []), by_kind.get("HorizontalPodAutoscaler", [])
    if len(sos) + len(hpas) != 1:
        problem(w, f"exactly one autoscaler expected (ScaledObject {len(sos)}, HPA {len(hpas)})")
    for so in sos:
        s = so["spec"]
        if s["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            problem(w, "ScaledObject targets another Deployment")
        if not (0 <= s.get("minReplicaCount", 0) <= s["maxReplicaCount"] <= PARTITIONS):
            problem(w, f"ScaledObject replicas must be 0 <= min <= max <= {PARTITIONS} partitions")
        for t in s["triggers"]:
            m = t["metadata"]
            for key, want_v in (("bootstrapServers", eff["brokers"]), ("topic", eff["topic"]), ("consumerGroup", eff["group"])):
                if m.get(key) != want_v:
                    problem(w, f"ScaledObject trigger {key}={m.get(key)!r} but the worker uses {want_v!r}")
            reset = re.search(r'"auto\.offset\.reset",\s*"(\w+)"',
                              open(os.path.join(repo, "crates/worker/src/kafka/source.rs"), encoding="utf-8").read())
            if reset and m.get("offsetResetPolicy") != reset.group(1):
                problem(w, f"trigger offsetResetPolicy must match the worker's auto.offset.reset ({reset.group(1)})")
            if m.get("allowIdleConsumers") == "true":
                problem(w, "allowIdleConsumers=true would start consumers with no partition")
            if m.get("ensureEvenDistributionOfPartitions") == "true" and PARTITIONS % s["maxReplicaCount"]:
                problem(w, f"maxReplicaCount {s['maxReplicaCount']} is not a divisor of the {PARTITIONS} partitions, which ensureEvenDistributionOfPartitions needs")
            if s.get("minReplicaCount", 0) == 0 and int(m.get("activationLagThreshold", "0")) > 0:
                problem(w, "a deployment that scales to zero with activationLagThreshold > 0 strands a trickle below it")
        fb = s.get("fallback")
        if fb and fb.get("behavior", "static") == "static":
            problem(w, f"a static fallback of {fb.get('replicas')} replicas shrinks a draining fleet (or keeps idle GPU pods) when KEDA cannot read Kafka: omit it, or use behavior currentReplicas")
            auth = t.get("authenticationRef", {}).get("name")
            if auth and auth not in {d["metadata"]["name"] for d in by_kind.get("TriggerAuthentication", [])}:
                problem(w, f"trigger authenticationRef {auth!r} has no TriggerAuthentication")
            if "sasl" in m and env.get("OCRFLEET_KAFKA_SECURITY_PROTOCOL", cfg.get("kafka-security-protocol", "plaintext")).lower() not in ("sasl_ssl", "sasl_plaintext"):
                problem(w, "KEDA uses SASL but the worker does not")
    for h in hpas:
        s = h["spec"]
        if not (1 <= s["minReplicas"] <= s["maxReplicas"] <= PARTITIONS):
            problem(w, f"HPA replicas must be 1 <= min <= max <= {PARTITIONS}")
        if s["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            problem(w, "HPA targets another Deployment")
    # Secrets must hold placeholders only.
    for sec in by_kind.get("Secret", []):
        if sec.get("data"):
            problem(w, f"Secret {sec['metadata']['name']}: use stringData placeholders, not data")
        for k, v in (sec.get("stringData") or {}).items():
            if "REPLACE_ME" not in v and not k.endswith("username"):
                problem(w, f"Secret {sec['metadata']['name']}: {k} looks like a real value (use REPLACE_ME)")
    # Files the worker is told to read must be in a mounted volume.
    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
    for n, v in env.items():
        if n.endswith(("_FILE", "_CA_LOCATION", "_CA_CERT")) and v and not any(v.startswith(mp + "/") for mp in mounts):
            problem(w, f"{n}={v} is not under a mounted volume")


def check_compose(repo, flags, envs):
    path = os.path.join(repo, "deploy/compose.yaml")
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    svcs = doc["services"]
    for need in ("kafka", "kafka-init", "elasticsearch", "worker-gpu", "worker-cpu", "prometheus", "grafana"):
        if need not in svcs:
            problem("deploy/compose.yaml", f"service {need} missing")
    if "apache/kafka:" not in svcs["kafka"]["image"] or "elasticsearch/elasticsearch:8." not in svcs["elasticsearch"]["image"]:
        problem("deploy/compose.yaml", "Kafka must be apache/kafka, Elasticsearch 8.x")
    if svcs["kafka"]["environment"].get("KAFKA_PROCESS_ROLES") != "broker,controller":
        problem("deploy/compose.yaml", "Kafka must run in KRaft combined mode")
    init_env = svcs["kafka-init"]["environment"]
    if int(init_env["PARTITIONS"]) != PARTITIONS:
        problem("deploy/compose.yaml", f"kafka-init must create {PARTITIONS} partitions")
    for name, variant, profile in (("worker-gpu", "gpu", "gpu"), ("worker-cpu", "cpu", "cpu")):
        s = svcs[name]
        where = f"deploy/compose.yaml {name}"
        if s.get("profiles") != [profile] or s["build"]["args"]["VARIANT"] != variant:
            problem(where, f"profile {profile} and build arg VARIANT={variant} expected")
        for n in s["environment"]:
            if n.startswith("OCRFLEET_") and n not in envs:
                problem(where, f"environment variable {n} is not read by ocrfleet")
        if s["environment"].get("OCRFLEET_KAFKA_TOPIC") != init_env["TOPIC"]:
            problem(where, "consumes another topic than kafka-init creates")
        if not s.get("read_only") or "ALL" not in s.get("cap_drop", []):
            problem(where, "must run read-only with all capabilities dropped")
    devs = svcs["worker-gpu"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if not devs or "gpu" not in devs[0].get("capabilities", []):
        problem("deploy/compose.yaml worker-gpu", "needs a GPU device reservation")
    for vol in svcs["prometheus"]["volumes"] + svcs["grafana"]["volumes"]:
        src = vol.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(os.path.normpath(os.path.join(repo, "deploy", src))):
                problem("deploy/compose.yaml", f"mounted file {src} does not exist")
    prom = yaml.safe_load(open(os.path.join(repo, "deploy/prometheus/prometheus.yml"), encoding="utf-8"))
    names = [n for j in prom["scrape_configs"] for sd in j.get("dns_sd_configs", []) for n in sd["names"]]
    if set(names) != {"worker-gpu", "worker-cpu"}:
        problem("deploy/prometheus/prometheus.yml", "must discover the worker-gpu and worker-cpu services")


def check_image(repo, rendered_env_ort):
    df = open(os.path.join(repo, "deploy/Dockerfile"), encoding="utf-8").read()
    m = re.search(r"ORT_DYLIB_PATH=(\S+)", df)
    if not m:
        problem("deploy/Dockerfile", "ORT_DYLIB_PATH not set")
    elif rendered_env_ort and m.group(1) not in rendered_env_ort:
        problem("deploy/Dockerfile", f"ORT_DYLIB_PATH {m.group(1)} differs from the Deployment's {rendered_env_ort}")
    for need in ("ARG VARIANT=gpu", "USER 10001:10001", "/opt/ocrfleet/models", "/usr/local/bin/ocrfleet",
                 "--features cuda", "nvidia/cuda:13.", "cudnn-runtime-ubuntu24.04", "debian:bookworm-slim"):
        if need not in df:
            problem("deploy/Dockerfile", f"expected {need!r}")
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", df, re.M | re.I))
    for ref in re.findall(r"^FROM\s+(\S+)", df, re.M):
        if ref in stages or re.fullmatch(r"[a-z]+-\$\{VARIANT\}", ref) or ref == "scratch":
            continue  # an earlier stage, possibly chosen by VARIANT, or the empty image
        name, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        if not tag or tag == "latest" or "$" in ref:
            problem("deploy/Dockerfile", f"base image {ref} needs an explicit, fixed tag")
    for stage in ("ort-gpu", "ort-cpu", "runtime-gpu", "runtime-cpu"):
        if stage not in stages:
            problem("deploy/Dockerfile", f"stage {stage} missing (selected by VARIANT)")
    ign_a = open(os.path.join(repo, "deploy/.dockerignore"), encoding="utf-8").read()
    ign_b = open(os.path.join(repo, "deploy/Dockerfile.dockerignore"), encoding="utf-8").read()
    if ign_a != ign_b:
        problem("deploy/.dockerignore", "differs from deploy/Dockerfile.dockerignore (keep them identical)")
    allow = [l[1:].rstrip("/") for l in ign_b.splitlines() if l.startswith("!")]
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", df, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        for src in parts[:-1]:
            src = src.rstrip("/")
            if not os.path.exists(os.path.join(repo, src)):
                problem("deploy/Dockerfile", f"COPY source {src} does not exist")
            if not any(src == a or src.startswith(a + "/") for a in allow):
                problem("deploy/Dockerfile.dockerignore", f"COPY source {src} is not let through (add !{src})")


def promql_exprs(repo):
    dash = json.load(open(os.path.join(repo, "deploy/grafana/ocrfleet-dashboard.json"), encoding="utf-8"))
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"dashboard panel {p['title']!r}", t["expr"]))
        if p.get("type") != "row" and p.get("datasource", {}).get("uid") != "${datasource}":
            problem("deploy/grafana/ocrfleet-dashboard.json", f"panel {p['title']!r} must use the $datasource variable")
    vals = yaml.safe_load(open(os.path.join(repo, "k8s/alternatives/hpa/prometheus-adapter-values.yaml"), encoding="utf-8"))
    for r in vals["rules"]["external"]:
        out.append(("prometheus-adapter rule", r["metricsQuery"]))
        out.append(("prometheus-adapter seriesQuery", r["seriesQuery"]))
    rules = yaml.safe_load(open(os.path.join(repo, "k8s/components/alerts/prometheusrule.yaml"), encoding="utf-8"))
    for g in rules["spec"]["groups"]:
        for r in g["rules"]:
            out.append((f"alert {r['alert']}", r["expr"]))
    return out


def substitute(expr):
    expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
    expr = expr.replace("<<.Series>>", "ocrfleet_consumer_lag").replace("<<.LabelMatchers>>", 'topic="ocr.requests"')
    return expr


def check_metrics(repo):
    known = metric_names(repo)
    exprs = promql_exprs(repo)
    for where, e in exprs:
        for name in set(re.findall(r"\bocrfleet_[a-z0-9_]+", e)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in known and base not in known and name != "ocrfleet_topic_lag_messages":
                problem(where, f"metric {name} is not exported by crates/worker/src/metrics.rs")
    hpa = yaml.safe_load(open(os.path.join(repo, "k8s/alternatives/hpa/hpa.yaml"), encoding="utf-8"))
    vals = yaml.safe_load(open(os.path.join(repo, "k8s/alternatives/hpa/prometheus-adapter-values.yaml"), encoding="utf-8"))
    served = {r["name"]["as"] for r in vals["rules"]["external"]}
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "External" and m["external"]["metric"]["name"] not in served:
            problem("k8s/alternatives/hpa/hpa.yaml", "External metric is not served by the adapter rule")
    contract = ["ocrfleet_messages_consumed_total", "ocrfleet_messages_indexed_total",
                "ocrfleet_messages_dead_lettered_total", "ocrfleet_chunk_size", "ocrfleet_batch_size",
                "ocrfleet_stage_seconds", "ocrfleet_inference_busy_ratio", "ocrfleet_downloaded_bytes_total",
                "ocrfleet_consumer_lag", "ocrfleet_rebalances_total"]
    used = " ".join(e for _, e in exprs)
    for m in contract:
        if m not in used:
            problem("deploy/grafana/ocrfleet-dashboard.json", f"no panel shows {m}")


def consistency(repo, rendered_dir):
    flags, envs = worker_settings(repo)
    ort = None
    files = sorted(glob.glob(os.path.join(rendered_dir, "*.yaml")))
    files = [f for f in files if not f.endswith((".core.yaml", ".rules.yaml"))]
    if not files:
        problem(rendered_dir, "no rendered manifests")
    for f in files:
        docs = load_all(f)
        check_rendered(repo, os.path.basename(f), docs, flags, envs)
        for d in docs:
            if d["kind"] == "Deployment":
                ort = env_map(d["spec"]["template"]["spec"]["containers"][0]).get("ORT_DYLIB_PATH")
    image_toml = tomllib.load(open(os.path.join(repo, "deploy/image/ocrfleet.toml"), "rb"))
    for k in image_toml:
        if k not in flags:
            problem("deploy/image/ocrfleet.toml", f"key {k!r} is not a worker setting")
    check_compose(repo, flags, envs)
    check_image(repo, ort)
    check_metrics(repo)
    print(f"consistency: {len(files)} renderings, {len(flags)} worker settings, {len(problems)} problem(s)")


def promql(repo, out):
    groups = [{"name": "ocrfleet-expressions", "rules": [
        {"record": f"ocrfleet:check:{i}", "expr": substitute(e)} for i, (_, e) in enumerate(promql_exprs(repo))]}]
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    print(f"promql: {len(groups[0]['rules'])} expressions written to {os.path.basename(out)}")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "split" and len(sys.argv) == 4:
        split(sys.argv[2], sys.argv[3])
    elif cmd == "consistency" and len(sys.argv) == 4:
        consistency(sys.argv[2], sys.argv[3])
    elif cmd == "promql" and len(sys.argv) == 4:
        promql(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
    for p in problems:
        print("ERROR " + p, file=sys.stderr)
    sys.exit(1 if problems else 0)
