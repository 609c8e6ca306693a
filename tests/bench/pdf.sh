#!/usr/bin/env bash
# PDF pages per second on one core, ocrfleet's renderer child (PDFium) beside Poppler
# (pdftoppm for rendering, pdftotext for text layers) on the same pages at the same resolution.
#
#   bash tests/bench/pdf.sh [DPI]      (default 150; needs poppler-utils, reportlab in .venv,
#                                       and target/release/ocrfleet)
#
# Sets: 60 born-digital pages (20 three-page reportlab documents: two columns, a rotated line,
# ligatures), and, when tests/eval/pdf_run.py has wrapped them, the evaluation set's 60 scans as
# image-only PDFs (.eval/pdf; rendered by ocrfleet at each scan's own resolution, by pdftoppm at
# DPI). Both tools run one document at a time in one process: one core. pdftoppm's figures
# include writing its PPM files (to a tmpfs when /dev/shm exists); ocrfleet's include sending
# the pixels to the worker over a pipe. Not run by CI.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
dpi=${1:-150}
bin=target/release/ocrfleet
command -v pdftoppm >/dev/null || { echo "pdf.sh: needs pdftoppm (Debian poppler-utils)" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ocrfleet-pdf-bench.XXXXXX")
out=/dev/shm; [ -d "$out" ] && [ -w "$out" ] || out=$work
trap 'rm -rf "$work" "$out"/ocrfleet-pdf-bench-*' EXIT
mkdir -p "$work/digital"
.venv/bin/python - "$work/digital" <<'EOF'
import os, sys
sys.path.insert(0, "tests/fixtures")
import make_pdfs
for i in range(20):
    c = make_pdfs.new_canvas(os.path.join(sys.argv[1], f"doc{i:02d}.pdf"))
    for p in range(3):
        make_pdfs.born_digital(c, f"Document {i} page {p + 1}")
        c.showPage()
    c.save()
EOF

timed() { # prints seconds of wall time for "$@", which must succeed
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/err" || { echo "pdf.sh: failed: $* ($(head -c 300 "$work/err"))" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
poppler() { # tool set args...: pages/s over every PDF of the set
  local tool=$1 set=$2; shift 2
  local pages=0 secs=0 f n s
  for f in "$set"/*.pdf; do
    n=$(pdfinfo "$f" 2>/dev/null | awk '/^Pages:/ {print $2}')
    case $tool in
      pdftoppm) s=$(timed pdftoppm "$@" "$f" "$out/ocrfleet-pdf-bench-p") ;;
      pdftotext) s=$(timed pdftotext "$@" "$f" "$out/ocrfleet-pdf-bench.txt") ;;
    esac
    pages=$((pages + n)); secs=$(echo "$secs + $s" | bc -l)
  done
  printf '%s %.1f' "$pages" "$(echo "$pages / $secs" | bc -l)"
}
ours() { # set args...: the bench's JSON line
  "$bin" bench pdf --repeat 2 --json "$@" 2>/dev/null | tail -n 1
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get(sys.argv[2], {}).get('pages_per_s', 0))" "$1" "$2"; }

echo "# PDF pages per second on one core, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(pdftoppm -v 2>&1 | head -n1)"
printf '%-44s %-26s %8s %12s\n' "set" "tool" "pages" "pages/s/core"
j=$(ours "$work/digital" --pdf-text text)
printf '%-44s %-26s %8s %12.1f\n' "born-digital, text layer" "ocrfleet (PDFium child)" 60 "$(field "$j" text)"
read -r n r <<<"$(poppler pdftotext "$work/digital" -layout)"
printf '%-44s %-26s %8s %12s\n' "born-digital, text layer" "pdftotext -layout" "$n" "$r"
j=$(ours "$work/digital" --pdf-text ocr --pdf-dpi "$dpi")
printf '%-44s %-26s %8s %12.1f\n' "born-digital, rendered at $dpi dpi" "ocrfleet (PDFium child)" 60 "$(field "$j" render)"
read -r n r <<<"$(poppler pdftoppm "$work/digital" -r "$dpi")"
printf '%-44s %-26s %8s %12s\n' "born-digital, rendered at $dpi dpi" "pdftoppm -r $dpi" "$n" "$r"
if [ -d .eval/pdf ]; then
  j=$(ours .eval/pdf --pdf-text ocr)
  printf '%-44s %-26s %8s %12.1f\n' "60 real scans, each at its own resolution" "ocrfleet (PDFium child)" 60 "$(field "$j" render)"
  read -r n r <<<"$(poppler pdftoppm .eval/pdf -r "$dpi")"
  printf '%-44s %-26s %8s %12s\n' "60 real scans, at $dpi dpi" "pdftoppm -r $dpi" "$n" "$r"
  j=$(ours .eval/pdf --pdf-text ocr --pdf-max-scan-dpi "$dpi")
  printf '%-44s %-26s %8s %12.1f\n' "60 real scans, at most $dpi dpi" "ocrfleet (PDFium child)" 60 "$(field "$j" render)"
fi
