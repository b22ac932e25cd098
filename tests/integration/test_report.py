"""`report`: index.html + PNG plots + summary.md from a real tiny-model cache, rendered in headless
Chromium to prove every plot loads (non-empty images with the expected titles); the crossover is
marked; bad output paths write nothing; a failure half-way leaves no partial report."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
from helpers import CHROMIUM, chromium_flags
from PIL import Image
from typer.testing import CliRunner

from remote_introspect.cli import app
from remote_introspect.errors import UserError
from remote_introspect.reporting import report as report_mod


@pytest.fixture(scope="module")
def built(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    res = CliRunner().invoke(app, ["report", "--cache", str(tiny_cache), "--out", str(out)])
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "wrote " in res.stdout and "4 plot(s)" in res.stdout
    return out


def _expected_titles(out: Path) -> dict[str, str]:
    titles = {}
    for png in out.glob("*.png"):
        if png.name.endswith("-strength.png"):
            layer = re.search(r"-layer(\d+)-", png.name)
            assert layer
            titles[png.name] = f"Detection and coherence vs strength — layer {layer.group(1)}"
        elif png.name.endswith("-controls.png"):
            titles[png.name] = "Controls (no injection)"
        elif png.name.endswith("-concepts.png"):
            titles[png.name] = "Per-concept rates (injected trials)"
        elif png.name.endswith("-anchors.png"):
            titles[png.name] = "Comparison with published anchors"
    return titles


def test_files_and_plot_titles(built: Path) -> None:
    names = sorted(p.name for p in built.iterdir() if not p.name.startswith("."))
    assert "index.html" in names and "summary.md" in names
    titles = _expected_titles(built)
    assert len(titles) == 4 == len([n for n in names if n.endswith(".png")])
    assert sum(n.endswith("-strength.png") for n in titles) == 1  # one layer in the tiny run
    html = (built / "index.html").read_text()
    for name, title in titles.items():
        with Image.open(built / name) as img:
            assert img.width > 300 and img.height > 200
            assert img.text.get("Title") == title  # the PNG's own title chunk
            lo, hi = img.convert("L").getextrema()
            assert lo < hi  # not a blank image
        assert f"src='{name}'" in html and f"alt='{title}'" in html
    # Statistics everywhere a rate is shown, and the null statement.
    assert re.search(r"strict hits 0/8 0\.0% \[0\.0%, \d+\.\d%\]", html)
    assert "0/8: true rate &lt; 32% (one-sided 95%)" in html
    assert "net detection (strict − affirmative FP)" in html and "refusals excluded" in html
    assert "0/1200" in html  # Merrill's published anchor with its exact interval
    md = (built / "summary.md").read_text()
    assert md.startswith("# remote_introspect report") and "## Experiment lindsey" in md
    assert all(f"]({name})" in md for name in titles)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (Debian package `chromium`; .ci/run installs it with apt)",
)
def test_plots_render_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    flags = chromium_flags(tmp_path / "profile", 10000)
    url = (built / "index.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img [^>]*>", dom.stdout)
    titles = _expected_titles(built)
    assert len(imgs) == len(titles) == 4
    for tag in imgs:
        src = re.search(r'src="([^"]+)"', tag)
        width = re.search(r'data-natural-width="(\d+)"', tag)
        height = re.search(r'data-natural-height="(\d+)"', tag)
        assert src and width and height, tag  # the page's load handler ran
        assert int(width.group(1)) > 0 and int(height.group(1)) > 0, f"{src.group(1)} did not load"
        assert f'alt="{titles[src.group(1)]}"' in tag
    check = re.search(r'<pre id="image-check">([^<]*)</pre>', dom.stdout)
    assert check and len(check.group(1).strip().splitlines()) == 4 and " 0x0" not in check.group(1)
    shot = tmp_path / "page.png"
    res = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,3000", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.exists()
    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # plots and text, not an empty page


def test_crossover_is_marked(tmp_path: Path) -> None:
    # identifies/coherent per strength: 0/1, .2/1, .4/.8, .8/0 -> rises through between 4 and 8.
    rows = []
    for s, ident, coh in ((1, 0, 5), (2, 1, 5), (4, 2, 4), (8, 4, 0)):
        for i in range(5):
            rows.append(
                {"condition": "concept", "layer": 3, "strength": float(s), "identifies": i < ident, "coherent": i < coh,
                 "affirmative": False, "early_detection": False, "refusal": False, "strict": False}
            )  # fmt: skip
    df = pl.DataFrame(rows)
    title, desc = report_mod.plot_strength(df, 3, (0, 10), tmp_path / "x.png")
    assert title == "Detection and coherence vs strength — layer 3"
    assert "rises through coherence at s≈5.33 (between 4 and 8)" in desc
    with Image.open(tmp_path / "x.png") as img:
        assert img.text["Title"] == title


def test_rerun_replaces_the_report_and_leaves_no_temp(built: Path, tiny_cache: Path) -> None:
    (built / "stale.png").write_bytes(b"old")
    res = CliRunner().invoke(app, ["report", "--cache", str(tiny_cache), "--out", str(built)])
    assert res.exit_code == 0, res.stderr
    assert not (built / "stale.png").exists()
    assert [p.name for p in built.parent.iterdir()] == [built.name]


@pytest.mark.parametrize("out", ["/proc/x", "/sys/x"])
def test_unwritable_pseudo_filesystem_is_one_error_line(out: str, tiny_cache: Path) -> None:
    """/proc and /sys pass the access() check but refuse the temp directory: one line, like export."""
    res = CliRunner().invoke(app, ["report", "--cache", str(tiny_cache), "--out", out])
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write " + out), res.stderr


@pytest.mark.parametrize(
    "case", ["parent missing", "out is a file", "foreign directory", "missing cache", "bad judge"]
)
def test_bad_output_one_line_nothing_written(case: str, tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    cache = tiny_cache
    judge = "heuristic"
    if case == "parent missing":
        out = tmp_path / "a" / "b" / "report"
    elif case == "out is a file":
        out.write_text("not a directory")
    elif case == "foreign directory":
        out.mkdir()
        (out / "thesis.tex").write_text("keep me")
    elif case == "missing cache":
        cache = tmp_path / "nope"
    else:
        judge = "gpt4"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(app, ["report", "--cache", str(cache), "--out", str(out), "--judge", judge])
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_failure_half_way_leaves_nothing(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: object, **k: object) -> str:
        raise UserError("simulated failure while plotting")

    monkeypatch.setattr(report_mod, "plot_concepts", boom)
    with pytest.raises(UserError):
        report_mod.build_report(tiny_cache, tmp_path / "report")
    assert list(tmp_path.iterdir()) == []


def test_control_examples_are_labelled_and_no_prereg_line_without_cells(
    tiny_cache: Path, tmp_path: Path
) -> None:
    """A control false positive reads "control" (not "LNone s0.0"); a prompt with no tested cells
    (lindsey-thinking, the positive control) gets no "Pre-registered ... 0 of 0" line."""
    import dataclasses

    from remote_introspect.reporting.audit import audit_with_frame

    audit, frame = audit_with_frame(tiny_cache, "heuristic")
    sections = [s for e in audit["experiments"] for s in report_mod._sections(frame, e, tmp_path)]
    control = {"key": "c0ffee123456", "layer": None, "strength": 0.0, "concept": None, "response": "Yes!"}
    hit = {"key": "abcdef123456", "layer": 3, "strength": 8.0, "concept": "dust", "response": "Dust."}
    first = dataclasses.replace(
        sections[0], examples={"control false positives": [control], "strict hits": [hit]}
    )
    md = report_mod._markdown(audit, [first], "now")
    assert "`c0ffee123456` control: \"Yes!\"" in md and "LNone" not in md
    assert "`abcdef123456` dust L3 s8.0: \"Dust.\"" in md
    assert "Pre-registered positive cells (Merrill):" in md
    empty = dataclasses.replace(first, prereg=(0, 0, []))
    assert "Pre-registered" not in report_mod._markdown(audit, [empty], "now")
    assert "pre-registered" not in report_mod._html(audit, [empty], "now")
