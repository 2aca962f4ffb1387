"""The HTML report in a real browser: headless chromium draws it, and its DOM holds the hostile
candidate name as text, never as an element. Skipped where chromium is not installed, except under
CI=true (as CI sets it), where a missing chromium is a failure: .ci/run installs it."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_html_report import HOSTILE, NAIVE_SOFTMAX

from softaudit.files import write_text
from softaudit.formats import get_format
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.reports.html_report import render_html
from softaudit.results.schema import document_of
from softaudit.runner.loop import run_audit

CHROMIUM = shutil.which("chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module", autouse=True)
def _needs_chromium() -> None:
    if CHROMIUM is not None:
        return
    if IN_CI:
        pytest.fail("chromium is not installed, and under CI=true the browser tests must run "
                    "(.ci/run installs it: apt-get install -y chromium)", pytrace=False)
    pytest.skip("chromium is not installed (apt-get install chromium)")


def decode_png(data: bytes) -> np.ndarray:
    """The pixels (height x width x channels) of a non-interlaced 8-bit RGB or RGBA PNG, as
    chromium writes screenshots; rows filtered None, Sub or Up are undone with numpy."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width * bpp + 1)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.uint8)
    for y in range(height):
        kind, line = int(raw[y, 0]), raw[y, 1:]
        if kind == 0:
            out[y] = line
        elif kind == 1:
            out[y] = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).ravel()
        elif kind == 2:
            out[y] = line + prev
        else:
            out[y] = _average_or_paeth(line.tolist(), prev.tolist(), bpp, kind)
        prev = out[y]
    return out.reshape(height, width, bpp)


def _average_or_paeth(cur: list[int], up: list[int], bpp: int, kind: int) -> list[int]:
    """Undo PNG filter 3 (Average) or 4 (Paeth) on one row: each byte depends on its left neighbour."""
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        if kind == 3:
            cur[i] = (cur[i] + (a + b) // 2) & 255
            continue
        c = up[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return cur


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a tiny audit of a numpy softmax file literally named <img src=x onerror=alert(1)>.py."""
    folder = tmp_path_factory.mktemp("browser")
    target = folder / f"{HOSTILE}.py"
    target.write_text(NAIVE_SOFTMAX)
    result = run_audit([str(target)], AuditOptions(case_patterns=["offset-plus-1e3", "mask-prefix"],
                                                   formats=[get_format("float32")], worker=WorkerOptions(isolated=False)))
    path = folder / "report.html"
    write_text(path, render_html(document_of(result)))
    return path


def test_chromium_draws_the_report(report: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1400,3000", report.as_uri(), profile=tmp_path / "profile")
    assert shot.exists(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert len(data) > 20_000
    pixels = decode_png(data)[:, :, :3]
    assert pixels.shape[:2] == (3000, 1400)
    sample = pixels[::5, ::5].reshape(-1, 3)
    colours = np.unique(sample, axis=0)
    inked = np.count_nonzero(sample.min(axis=1) < 200)
    assert len(colours) > 50, "the screenshot is (nearly) one colour"
    assert inked > 0.02 * len(sample), "almost nothing is drawn"
    # The FAIL badges and the heat map's hatched hard-failure cells are drawn in colour.
    red = (sample[:, 0] > 150) & (sample[:, 1] < 90) & (sample[:, 2] < 90)
    purple = (sample[:, 0] > 70) & (sample[:, 0] < 120) & (sample[:, 1] < 70) & (sample[:, 2] > 110)
    assert red.any() and purple.any()


def test_the_dom_holds_the_hostile_name_as_text_and_the_svgs(report: Path, tmp_path: Path):
    done = _chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile")
    dom = done.stdout
    assert "</html>" in dom, done.stderr[-2000:]
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert not re.search(r"<img\b", dom, flags=re.I)
    assert len(re.findall(r"<svg\b", dom)) >= 4  # heat map, legend, error against offset and range
    assert re.search(r'<svg class="heat"', dom) and re.search(r'data-quantity="offset"', dom)
    assert "<script" not in dom.lower()
