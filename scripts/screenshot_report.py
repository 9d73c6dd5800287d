#!/usr/bin/env python3
"""Render a run's report.html in headless Chromium, check it, and save a full-page PNG.

Usage:
    scripts/screenshot_report.py RUN_DIR [OUT.png] [WIDTH]

    RUN_DIR  a directory holding report.html (written by `posttrain demo`, e.g. runs/demo)
    OUT.png  where to write the screenshot (default: RUN_DIR/report.png)
    WIDTH    viewport width in CSS pixels (default 1200; the report's body is 1100 px wide)

Needs only the Python standard library and Chromium (`apt-get install -y chromium` on Debian).
Pillow, if importable, is used only to shrink a PNG over 2 MB.

How it gets the whole page. `chromium --headless --screenshot` captures the window, not the
page, so the page height is measured first, in the same browser at the same width: a copy of
report.html is written to a temporary directory with a `<base href>` pointing back at RUN_DIR
(so relative image paths still resolve) and a small script that, once everything has loaded,
writes `document.documentElement.scrollHeight` and the number of images that failed to decode
onto the `<html>` element as attributes. `--dump-dom` prints the DOM after
`--virtual-time-budget`, and the attributes are read back from it. The second run takes the
screenshot of the unmodified report with the window set to WIDTH x measured height. The run
directory is never written to (except OUT.png if it is placed there).

It exits non-zero, with a message saying why, when:
  - Chromium is not installed;
  - RUN_DIR/report.html is missing;
  - an <img src=...> in the report points at a file that does not exist (paths are resolved
    relative to the report; remote http(s) images count as missing: the check runs offline);
  - a referenced PNG is corrupt or truncated (its chunks are walked and CRC-checked up to
    IEND: Chromium draws a truncated PNG's top part and still reports it loaded), or the
    browser reports an image that did not load at all (e.g. a text file named .jpg);
  - the height could not be measured, or the screenshot was not written, is not a PNG of the
    expected size, or is suspiciously small (a blank page compresses to a few KB).
Content wider than the window (e.g. a table that cannot wrap) only prints a warning.
"""
from __future__ import annotations

import html
import html.parser
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.parse
import zlib
from pathlib import Path

DEFAULT_WIDTH = 1200
MAX_HEIGHT = 16000  # past this Chromium's compositor may tile or fail; we clip and warn
MIN_PNG_BYTES = 20_000  # a rendered report is hundreds of KB; a blank page is ~5 KB
MAX_PNG_BYTES = 2_000_000  # above this, shrink (docs/img should stay small)
BUDGET_MS = 5000  # virtual time for images/fonts to load; local files need far less
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
APT_HINT = "install it with: apt-get install -y chromium   (use sudo when not root)"

MEASURE_JS = """<script>
window.addEventListener('load', function () {
  var d = document.documentElement;
  var broken = Array.prototype.filter.call(document.images, function (im) {
    return !(im.complete && im.naturalWidth > 0);
  }).map(function (im) { return im.getAttribute('src'); });
  d.setAttribute('data-scroll-height', String(Math.max(d.scrollHeight, document.body.scrollHeight)));
  d.setAttribute('data-images-total', String(document.images.length));
  d.setAttribute('data-images-broken', broken.join('|'));
  d.setAttribute('data-scroll-width', String(d.scrollWidth));
});
</script>"""


class CheckError(Exception):
    """A failed check; main() prints it and exits 1."""


class _ImgSrcParser(html.parser.HTMLParser):
    """Collects the src attribute of every <img> (html.parser copes with either quote style)."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            src = dict(attrs).get("src")
            self.srcs.append(src if src is not None else "")


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise CheckError(f"Chromium not found (looked for {', '.join(CHROMIUM_NAMES)}); {APT_HINT}")


def img_srcs(report_html: str) -> list[str]:
    parser = _ImgSrcParser()
    parser.feed(report_html)
    return parser.srcs


def check_images(srcs: list[str], report_dir: Path) -> list[str]:
    """Return a message per src that does not name an existing local file."""
    problems = []
    for src in srcs:
        if src.startswith("data:"):
            continue  # embedded in the page itself
        url = urllib.parse.urlsplit(src)
        if url.scheme in ("http", "https"):
            problems.append(f"{src}: remote image (the report should be self-contained)")
            continue
        if not url.path:
            problems.append(f"{src!r}: empty src")
            continue
        rel = urllib.parse.unquote(url.path)
        target = Path(rel) if url.scheme == "file" or os.path.isabs(rel) else report_dir / rel
        if not target.is_file():
            problems.append(f"{src}: no such file {target}")
        elif target.suffix.lower() == ".png" and (why := png_problem(target)):
            problems.append(f"{src}: {why}")
    return problems


def png_problem(path: Path) -> str | None:
    """Why the PNG at path is not whole (bad signature, bad CRC, truncated), or None."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "not a PNG (bad signature)"
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return f"truncated inside the {kind!r} chunk"
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return f"CRC mismatch in the {kind!r} chunk"
        if kind == b"IEND":
            return None
        pos = end
    return "truncated (no IEND chunk)"


def chromium_cmd(chromium: str, profile: str, width: int, height: int) -> list[str]:
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", "--no-default-browser-check", "--mute-audio",
        f"--user-data-dir={profile}", "--force-device-scale-factor=1",
        f"--window-size={width},{height}", f"--virtual-time-budget={BUDGET_MS}",
    ]


def run_chromium(cmd: list[str], timeout_s: int = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise CheckError(f"Chromium did not finish in {timeout_s} s: {' '.join(cmd)}") from exc


def measure(chromium: str, report: Path, width: int, tmp: Path) -> tuple[int, int, int, list[str]]:
    """Load an instrumented copy of the report; return (page height, page width, images seen,
    broken srcs)."""
    source = report.read_text(encoding="utf-8")
    base = f'<base href="{html.escape(report.parent.resolve().as_uri())}/">'
    # <base> must come before any relative URL, so it goes first inside <head> (or first at all).
    if re.search(r"<head[^>]*>", source, flags=re.I):
        source = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + base, source, count=1, flags=re.I)
    else:
        source = base + source
    if re.search(r"</body>", source, flags=re.I):
        source = re.sub(r"</body>", lambda m: MEASURE_JS + m.group(0), source, count=1, flags=re.I)
    else:
        source += MEASURE_JS
    probe = tmp / "measure.html"
    probe.write_text(source, encoding="utf-8")
    cmd = chromium_cmd(chromium, str(tmp / "profile"), width, 800)
    done = run_chromium(cmd + ["--dump-dom", probe.as_uri()])
    attrs = {}
    for key in ("data-scroll-height", "data-scroll-width", "data-images-total", "data-images-broken"):
        match = re.search(rf'{key}="([^"]*)"', done.stdout)
        attrs[key] = html.unescape(match.group(1)) if match else None
    if not attrs["data-scroll-height"]:
        raise CheckError(
            "could not measure the page height (the load event never fired?); chromium "
            f"exit {done.returncode}, stderr tail:\n{done.stderr[-2000:]}"
        )
    broken = [s for s in (attrs["data-images-broken"] or "").split("|") if s]
    return (int(attrs["data-scroll-height"]), int(attrs["data-scroll-width"] or 0),
            int(attrs["data-images-total"] or 0), broken)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (no Pillow needed)."""
    with path.open("rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise CheckError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def shrink_png(path: Path) -> str:
    """Shrink a large PNG with Pillow if available; return what was done."""
    try:
        from PIL import Image
    except ImportError:
        return "left as is (Pillow not installed; pass a smaller WIDTH to shrink it)"
    with Image.open(path) as im:
        # 256-colour palette: the report is flat colours, text and line plots, so this is
        # visually lossless here and typically cuts the file 3-4x.
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return "quantized to a 256-colour palette with Pillow"


def screenshot(chromium: str, report: Path, out: Path, width: int, height: int, tmp: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()  # so a stale file cannot pass for a fresh screenshot
    cmd = chromium_cmd(chromium, str(tmp / "profile"), width, height)
    done = run_chromium(cmd + [f"--screenshot={out}", report.as_uri()])
    if not out.is_file():
        raise CheckError(
            f"Chromium wrote no screenshot to {out} (exit {done.returncode}); "
            f"stderr tail:\n{done.stderr[-2000:]}"
        )


def parse_args(argv: list[str]) -> tuple[Path, Path, int]:
    if not 1 <= len(argv) <= 3 or argv[0] in ("-h", "--help"):
        raise CheckError("usage: scripts/screenshot_report.py RUN_DIR [OUT.png] [WIDTH]")
    run_dir = Path(argv[0]).resolve()
    out = Path(argv[1]).resolve() if len(argv) > 1 else run_dir / "report.png"
    try:
        width = int(argv[2]) if len(argv) > 2 else DEFAULT_WIDTH
    except ValueError as exc:
        raise CheckError(f"WIDTH must be an integer, got {argv[2]!r}") from exc
    if not 320 <= width <= 4000:
        raise CheckError(f"WIDTH must be between 320 and 4000, got {width}")
    return run_dir, out, width


def main(argv: list[str]) -> int:
    run_dir, out, width = parse_args(argv)
    report = run_dir / "report.html"
    if not report.is_file():
        raise CheckError(f"no report at {report} (run `posttrain demo` first)")
    chromium = find_chromium()

    srcs = img_srcs(report.read_text(encoding="utf-8"))
    missing = check_images(srcs, run_dir)
    print(f"images referenced: {len(srcs)}, found on disk and whole: {len(srcs) - len(missing)}")
    if missing:
        raise CheckError("report references missing or broken images:\n  " + "\n  ".join(missing))

    with tempfile.TemporaryDirectory(prefix="screenshot_report_") as tmp_name:
        tmp = Path(tmp_name)
        height, page_width, seen, broken = measure(chromium, report, width, tmp)
        print(f"browser: {seen} images in the page, {seen - len(broken)} loaded")
        if broken:
            raise CheckError("images the browser could not load or decode: " + ", ".join(broken))
        if seen != len(srcs):
            raise CheckError(f"parser found {len(srcs)} <img> but the browser saw {seen}")
        if page_width > width:  # a warning: the page still renders, but is cut at the right
            print(f"warning: content is {page_width} px wide, more than the {width} px window: "
                  "something overflows (a wide table or <pre>); the screenshot cuts it off")
        if height > MAX_HEIGHT:
            print(f"warning: page is {height} px tall; clipping the screenshot to {MAX_HEIGHT}")
            height = MAX_HEIGHT
        screenshot(chromium, report, out, width, height, tmp)

    got_w, got_h = png_size(out)
    if (got_w, got_h) != (width, height):
        raise CheckError(f"screenshot is {got_w}x{got_h} px, expected {width}x{height}")
    n_bytes = out.stat().st_size
    if n_bytes < MIN_PNG_BYTES:
        raise CheckError(f"screenshot is only {n_bytes} bytes: the page probably rendered blank")
    if n_bytes > MAX_PNG_BYTES:
        how = shrink_png(out)
        print(f"screenshot was {n_bytes / 1e6:.1f} MB: {how}")
        n_bytes = out.stat().st_size
    print(f"wrote {out}: {got_w}x{got_h} px, {n_bytes / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except CheckError as err:
        print(f"screenshot_report: FAIL: {err}", file=sys.stderr)
        sys.exit(1)
