#!/usr/bin/env bash
# The main job, end to end, on a local default stack (one command on a fresh machine):
#   noida-db (Kafka + Elasticsearch wire protocols) on 127.0.0.1:9092 / :9200,
#   the PP-OCR weights and ONNX Runtime, sample images served over HTTP on loopback,
#   and a sample PDF (page 1 born digital, page 2 a scan, page 3 born digital),
#   `ocrfleet produce` → `ocrfleet worker` (until the backlog is drained) → Elasticsearch
#   searches that find the sample image containing 发票 ("invoice"), and the PDF by a word of its
#   text layer ("quarterly") and by one of its scanned page (公园, "park").
# Re-running is safe: document ids are stable, so documents are overwritten, not duplicated.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
KAFKA_PORT=${KAFKA_PORT:-9092}
ES_PORT=${ES_PORT:-9200}
HTTP_PORT=${HTTP_PORT:-8088}
TOPIC=${TOPIC:-ocr.requests}
INDEX=${INDEX:-ocrfleet}

step() { printf '\n==> %s\n' "$*"; }

step "Python tools: noida-db (Kafka + Elasticsearch protocols), reportlab and pypdf (the sample PDF) into .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check noida-db==0.2.3 reportlab==5.1.0 pypdf==7.1.1

step "PP-OCR weights, ONNX Runtime and PDFium (models/fetch.sh)"
bash models/fetch.sh

step "Building ocrfleet (cargo build --release)"
cargo build --release -q -p ocrfleet
bin="$root/target/release/ocrfleet"

step "Starting noida-db on 127.0.0.1:$KAFKA_PORT (Kafka) and :$ES_PORT (Elasticsearch)"
if ! .venv/bin/noida-db status --data-dir "$root/.noida" 2>/dev/null | grep -q "kafka .*$KAFKA_PORT"; then
  .venv/bin/noida-db up --data-dir "$root/.noida" --only kafka,elasticsearch \
    --kafka-port "$KAFKA_PORT" --elasticsearch-port "$ES_PORT" 2>&1 | grep -v GLIBC || true
fi
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$ES_PORT/" >/dev/null && break; sleep 0.2; done

step "Serving sample images and a sample PDF on http://127.0.0.1:$HTTP_PORT/"
samples="$root/.demo-samples"
rm -rf "$samples" && mkdir -p "$samples"
cp tests/fixtures/worker/*.png "$samples/"
.venv/bin/python tests/fixtures/make_pdfs.py "$samples/pdf" >/dev/null
cp "$samples/pdf/mixed.pdf" "$samples/report.pdf"
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$samples" >/dev/null 2>&1 &
http_pid=$!
trap 'kill $http_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HTTP_PORT/" >/dev/null && break; sleep 0.2; done

step "Producing one message per sample image, and one for the PDF, to $TOPIC"
for f in "$samples"/*.png "$samples"/report.pdf; do
  name=$(basename "$f")
  printf '{"url":"http://127.0.0.1:%s/%s","id":"sample-%s","metadata":{"file":"%s"}}\n' "$HTTP_PORT" "$name" "${name%.*}" "$name"
done | "$bin" produce --brokers "127.0.0.1:$KAFKA_PORT" --topic "$TOPIC" --create-partitions 3

step "Running a worker until the backlog is drained"
"$bin" worker --brokers "127.0.0.1:$KAFKA_PORT" --topic "$TOPIC" \
  --es-url "http://127.0.0.1:$ES_PORT" --es-index "$INDEX" \
  --fetch-allow 127.0.0.0/8 --http-addr 127.0.0.1:9464 --exit-when-idle 5s

step "Searching Elasticsearch for 发票 (invoice)"
curl -s -XPOST "http://127.0.0.1:$ES_PORT/$INDEX/_refresh" >/dev/null
result=$(curl -s "http://127.0.0.1:$ES_PORT/$INDEX/_search" -H 'content-type: application/json' \
  -d '{"query":{"match":{"text":"发票"}},"_source":["url","text"]}')
echo "$result" | python3 -c '
import json, sys
r = json.load(sys.stdin)
hits = r["hits"]["hits"]
print(f"{len(hits)} hit(s) for 发票:")
for h in hits:
    src = h["_source"]
    print("  %s: %s  text=%r" % (h["_id"], src["url"], src["text"]))
sys.exit(0 if any("invoice" in h["_source"]["url"] for h in hits) else 1)
'
for word in quarterly 公园; do
  step "Searching Elasticsearch for $word (the PDF: its text layer, and its scanned page)"
  curl -s "http://127.0.0.1:$ES_PORT/$INDEX/_search" -H 'content-type: application/json' \
    -d "{\"query\":{\"match\":{\"text\":\"$word\"}},\"_source\":[\"url\",\"pages\",\"page_sources\"]}" |
    WORD="$word" python3 -c '
import json, os, sys
hits = json.load(sys.stdin)["hits"]["hits"]
word = os.environ["WORD"]
print(f"{len(hits)} hit(s) for {word}:")
for h in hits:
    s = h["_source"]
    print("  %s: %s  pages=%s page_sources=%s" % (h["_id"], s["url"], s.get("pages"), s.get("page_sources")))
sys.exit(0 if any(h["_id"] == "sample-report" for h in hits) else 1)
'
done
echo
echo "Stack still running: Elasticsearch http://127.0.0.1:$ES_PORT/$INDEX/_search, Kafka 127.0.0.1:$KAFKA_PORT"
echo "Stop it with: .venv/bin/noida-db down --data-dir $root/.noida"
