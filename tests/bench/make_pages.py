"""Renders multi-line document pages for throughput benchmarks (not for accuracy claims).

    .venv/bin/python tests/bench/make_pages.py OUT_DIR [--count 48] [--seed 7]

Each page is a receipt- or invoice-like document of about 1000 px on its long side
(800-1240 px wide, 1000-1750 px tall), with about 40 to 90 text lines (30 to 60 rows; an item row has a name and a price): item rows with prices,
headers, dates, Chinese lines, at 15 to 30 px, on a slightly noisy, slightly tilted, JPEG
(quality 85) background. That is the shape of a page the engine's throughput targets are
stated for (issue 8: "pages of about 1000 px", "40 to 90 lines"). The text is known and written
to OUT_DIR/ground_truth.json, but rendered text is not evidence of accuracy on real scans: use
these pages for speed only. Deterministic for a given seed and FreeType build.

Needs Pillow and numpy, and the Debian fonts fonts-wqy-zenhei and fonts-dejavu-core.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WQY = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
SERIF = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"

WORDS = ("coffee latte bagel cheese tomato basil olive bread butter milk sugar tea water juice "
         "salad chicken rice noodle soup cake apple orange banana lemon cookie pasta sauce pepper "
         "garlic onion carrot potato steak burger fries soda cream honey jam yogurt granola").split()
ZH = ("发票 公园 欢迎 光临 谢谢 惠顾 合计 现金 找零 日期 时间 收银员 商品 数量 单价 金额 会员 积分 "
      "地址 电话 北京 上海 广州 深圳 超市 餐厅 咖啡 面包 牛奶 苹果 香蕉 米饭 面条 鸡肉 蔬菜").split()
HEADERS = ["INVOICE", "RECEIPT", "TAX INVOICE", "SALES RECEIPT", "ORDER SUMMARY", "STATEMENT"]


def item_line(rng):
    n = int(rng.integers(1, 4))
    name = " ".join(rng.choice(WORDS, n)).upper() if rng.random() < 0.5 else " ".join(rng.choice(WORDS, n)).title()
    qty = int(rng.integers(1, 9))
    price = float(rng.integers(50, 99999)) / 100
    return f"{qty} {name}", f"{price * qty:.2f}"


def zh_line(rng):
    return "".join(rng.choice(ZH, int(rng.integers(2, 7))))


def page(rng):
    w = int(rng.integers(800, 1241))
    h = int(rng.integers(1000, 1751))
    bg = int(rng.integers(225, 256))
    img = Image.new("L", (w, h), bg)
    d = ImageDraw.Draw(img)
    lines = []
    margin = int(rng.integers(30, 80))
    y = margin
    n_target = int(rng.integers(30, 61))  # rows; an item row holds two lines
    size = int(rng.integers(15, 31))
    # Fit the line count to the page: shrink the font until n_target lines fit.
    while size > 15 and margin * 2 + n_target * size * 1.35 > h:
        size -= 1
    n_target = min(n_target, int((h - 2 * margin) / (size * 1.35)))
    latin = ImageFont.truetype([DEJAVU, MONO, SERIF][int(rng.integers(0, 3))], size)
    big = ImageFont.truetype(DEJAVU, int(size * 1.5))
    cjk = ImageFont.truetype(WQY, size)
    ink = int(rng.integers(0, 70))
    title = str(rng.choice(HEADERS))
    d.text((margin, y), title, font=big, fill=ink)
    lines.append(title)
    y += int(size * 2.1)
    for i in range(n_target - 1):
        kind = rng.random()
        if i == 0 or kind < 0.08:
            text = f"DATE {int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/20{int(rng.integers(18, 27))} " \
                   f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
            d.text((margin, y), text, font=latin, fill=ink)
            lines.append(text)
        elif kind < 0.25:
            text = zh_line(rng)
            d.text((margin, y), text, font=cjk, fill=ink)
            lines.append(text)
        elif kind < 0.32:
            text = f"TOTAL {float(rng.integers(100, 999999)) / 100:.2f}"
            d.text((margin, y), text, font=latin, fill=ink)
            lines.append(text)
        else:
            left, right = item_line(rng)
            d.text((margin, y), left, font=latin, fill=ink)
            rw = d.textlength(right, font=latin)
            d.text((w - margin - rw, y), right, font=latin, fill=ink)
            lines.append(left)
            lines.append(right)
        y += int(size * 1.35)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img = img.rotate(float(rng.uniform(-1.5, 1.5)), resample=Image.BILINEAR, fillcolor=bg, expand=False)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img.convert("RGB"), lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    truth = {}
    for i in range(a.count):
        img, lines = page(rng)
        name = f"page_{i:03d}.jpg"
        img.save(os.path.join(a.out, name), quality=85)
        truth[name] = lines
    with open(os.path.join(a.out, "ground_truth.json"), "w") as f:
        json.dump(truth, f, ensure_ascii=False, indent=0)
    n = sum(len(v) for v in truth.values())
    print(f"{a.count} pages, {n} lines ({n / a.count:.0f} per page) in {a.out}")


if __name__ == "__main__":
    main()
