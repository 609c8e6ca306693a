"""One CPU peer over a folder of images, every image once, for a whole-process comparison with
`ocrfleet ocr` (tests/bench/cpu_peers.sh times both processes from outside).

    .venv-peers/bin/python tests/bench/peer_ocr.py {rapidocr,faster-paddle} DIR [--threads N]

- rapidocr: Python RapidOCR (rapidocr_onnxruntime 1.4.4, onnxruntime 1.32.0) with ocrfleet's
  default set's weights (PP-OCRv4 mobile det and cls, PP-OCRv6 small rec, the downloaded graphs
  in models/), its own defaults otherwise.
- faster-paddle: faster-paddle 1.0.4 (Rust + ONNX Runtime, PP-OCRv6 "small" models from its
  wheel), its defaults.
Prints one JSON line: engine, threads, images, lines, load_s (engine construction), run_s.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["rapidocr", "faster-paddle"])
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    names = sorted(n for n in os.listdir(args.dir) if n.lower().endswith(EXTS))
    paths = [os.path.join(args.dir, n) for n in names]
    t0 = time.perf_counter()
    if args.engine == "rapidocr":
        from rapidocr_onnxruntime import RapidOCR
        m = os.path.join(ROOT, "models")
        engine = RapidOCR(
            det_model_path=os.path.join(m, "v4", "det.onnx"),
            cls_model_path=os.path.join(m, "v4", "cls.onnx"),
            rec_model_path=os.path.join(m, "v6", "rec.onnx"),
            intra_op_num_threads=args.threads,
            inter_op_num_threads=1,
        )

        def run(p):
            res, _ = engine(p)
            return len(res or [])
        name = "rapidocr_onnxruntime 1.4.4 (v4 det, v6 rec)"
    else:
        import faster_paddle
        engine = faster_paddle.OcrEngine(model_size="small", threads=args.threads)

        def run(p):
            with open(p, "rb") as f:
                return len(engine.ocr(f.read())["bounds"])
        name = "faster-paddle 1.0.4 (small)"
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    lines = sum(run(p) for p in paths)
    print(json.dumps({"engine": name, "threads": args.threads, "images": len(paths), "lines": lines,
                      "load_s": round(load, 3), "run_s": round(time.perf_counter() - t1, 3)}))


if __name__ == "__main__":
    sys.exit(main())
