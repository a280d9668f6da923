"""The HTML report: escaping, self-containment, atomic writes, and results in Jupyter."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import xaikit as xk
from _models import ConvReluLinear
from xaikit._plotting import new_figure
from xaikit._repr import HTMLRepr
from xaikit.report import Markup, Page
from xaikit.report.html import RENDERERS, escape, result_html, table
from xaikit.report.output import staged_dir, write_text_atomic

EVIL = "<script>alert(1)</script>"


def _figure():
    fig = new_figure((1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_page_is_self_contained_with_every_string_escaped(tmp_path):
    page = Page(f"title {EVIL}")
    page.section("first", f"heading {EVIL}")
    page.paragraph(f"text {EVIL} & more")
    page.table([EVIL], [[EVIL], [0.12345]])
    page.pre(f"rule {EVIL}")
    page.figure(_figure(), alt=f'alt "{EVIL}', caption=EVIL)
    page.section("second", "two")
    page.placeholder(EVIL)
    html = page.save(tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html  # every copy of the evil string is escaped
    # title and h1, heading and its contents link, text, 2 cells, pre, alt, caption, note
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 11
    assert "<td>0.123</td>" in html  # floats to 3 decimals
    assert re.findall(r'<section id="([a-z-]+)">', html) == ["first", "second"]
    assert '<a href="#first">' in html  # contents: plain anchors, no script
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert not re.search(r"(src|href)=[\"'](https?:)?//", html)
    assert "@import" not in html and "url(" not in html  # no font, no external style
    assert not list(tmp_path.glob(".*.tmp"))


def test_page_takes_markup_but_refuses_other_html():
    page = Page("t")
    with pytest.raises(TypeError, match="fragment: expected Markup"):
        page.html("<b>raw</b>")
    page.html(Markup("<b>ok</b>"))


@pytest.mark.parametrize(
    ("earlier", "section_id"), [([], "Bad Id"), (["a"], "a")], ids=["not an id", "repeated"]
)
def test_page_refuses_a_bad_section_id(earlier, section_id):
    page = Page("t")
    for done in earlier:
        page.section(done, "x")
    with pytest.raises(ValueError, match="section_id"):
        page.section(section_id, "again")


def test_escaping_keeps_markup_only():
    assert escape(EVIL) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escape(Markup("<b>x</b>")) == "<b>x</b>"
    assert table(["a"], [[Markup("<i>1</i>")], ["<i>2</i>"]]).count("<i>") == 1


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "index.html"
    target.write_text("old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def test_staged_dir_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "a.txt").write_text("a")
        raise RuntimeError("half way")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "a.txt").write_text("2")
        raise RuntimeError("again")
    assert (out / "a.txt").read_text() == "1"  # untouched
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("3")
    assert (out / "a.txt").read_text() == "3" and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(ValueError, match=r"^out: expected a directory"),
        staged_dir(tmp_path / "file"),
    ):
        pass


def _dead_pid() -> int:
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_staged_dir_swaps_the_whole_folder_in_one_step(tmp_path, monkeypatch):
    from xaikit.report import output

    out = tmp_path / "out"
    (out / "audit").mkdir(parents=True)
    (out / "audit" / "audit.json").write_text("old json")
    (out / "audit" / "stale.txt").write_text("old extra")
    (out / "index.html").write_text("old page")
    (out / "keep.txt").write_text("mine")
    before = out.stat().st_ino
    swaps = []
    real = output._exchange
    monkeypatch.setattr(output, "_exchange", lambda a, b: swaps.append(b) or real(a, b))
    with staged_dir(out) as stage:
        (stage / "audit").mkdir()
        (stage / "audit" / "audit.json").write_text("new json")
        (stage / "index.html").write_text("new page")
        assert _tree(out)["index.html"] == "old page"  # nothing changes while the stage fills
    # One folder replaced by another: a subfolder the command writes is replaced whole, files
    # it does not write are kept, and nothing is left beside it.
    assert swaps == [out] and out.stat().st_ino != before
    assert _tree(out) == {
        "audit/audit.json": "new json", "index.html": "new page", "keep.txt": "mine",
    }  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_dir_without_an_exchange_recovers_after_a_kill(tmp_path, monkeypatch):
    from xaikit.report import output

    monkeypatch.setattr(output, "_exchange", lambda a, b: False)  # a system without one
    out = tmp_path / "out"
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("1")
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("2")
    assert _tree(out) == {"a.txt": "2"} and sorted(os.listdir(tmp_path)) == ["out"]
    # A kill between the two renames: no out, the old folder renamed away, the new one staged.
    stem = output._stem(out.absolute())
    pid = _dead_pid()
    os.rename(out, tmp_path / f"{stem}{pid}-abcdefgh.old")
    (tmp_path / f"{stem}{pid}-abcdefgh.staging").mkdir()
    (tmp_path / f"{stem}{pid}-zzzzzzzz.staging").mkdir()  # and a kill while staging
    (tmp_path / f".other.12345678.{pid}-abcdefgh.staging").mkdir()  # another out's: not ours
    output.recover(out)
    assert _tree(out) == {"a.txt": "2"}  # the old folder is back, whole
    assert sorted(os.listdir(tmp_path)) == [f".other.12345678.{pid}-abcdefgh.staging", "out"]


def test_staged_dir_leaves_a_live_runs_staging_folder(tmp_path):
    from xaikit.report import output

    out = tmp_path / "out"
    live = tmp_path / f"{output._stem(out)}{os.getppid()}-abcdefgh.staging"
    live.mkdir()
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("1")
    assert sorted(os.listdir(tmp_path)) == [live.name, "out"]


def test_staged_dir_refuses_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("keep")
    for out in (tmp_path, ".", tmp_path.parent):
        with (
            pytest.raises(ValueError, match=r"^out: .* is the current folder or holds it"),
            staged_dir(out),
        ):
            pass
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_staged_dir_with_a_long_name(tmp_path):
    out = tmp_path / ("o" * 250)
    for text in ("1", "2"):
        with staged_dir(out) as stage:
            (stage / "a.txt").write_text(text)
    assert _tree(out) == {"a.txt": "2"} and sorted(os.listdir(tmp_path)) == [out.name]


def _is_fragment(html: str) -> bool:
    return (
        "<html" not in html
        and "<script" not in html
        and all(s.startswith("data:image/png") for s in re.findall(r'src="([^"]*)"', html))
    )


def test_repr_html_of_results():
    net = ConvReluLinear(hidden=3)
    X = np.random.default_rng(0).random((24, 1, 8, 8), dtype=np.float32)
    y = np.arange(24) % 2
    e = xk.explain(net, X[0], method="saliency", target=1)
    html = e._repr_html_()
    assert _is_fragment(html) and "Explanation · saliency" in html
    assert "<td>target</td><td>1</td>" in html
    v = xk.visualize(net, xk.objectives.channels("conv"), steps=3, input_shape=(1, 8, 8))
    assert _is_fragment(v._repr_html_()) and "3 images" in v._repr_html_()
    fa = xk.filter_activations(net, X[:2], layer="conv")
    assert "Activation maps of conv" in fa._repr_html_()
    r = xk.probe(net, X, y, layers=["conv", "fc"])
    html = r._repr_html_()
    assert _is_fragment(html) and html.count("<tr>") == 3  # header + two layers
    p = xk.project_layers(net, X, layers=["conv", "fc"], labels=y)
    assert "Projections of conv, fc" in p._repr_html_()
    assert _is_fragment(p["conv"]._repr_html_())


def test_repr_html_of_surrogate_escapes_feature_names():
    rows = np.random.default_rng(0).random((60, 2))

    def model(x):
        p = (x[:, 0] > 0.5).astype(float)
        return np.stack([1 - p, p], axis=1)

    s = xk.surrogate(model, rows, max_depth=1, feature_names=[EVIL, "b"])
    html = s._repr_html_()
    assert _is_fragment(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;= 0.5" in html
    assert f"<td>fidelity (held out)</td><td>{s.fidelity:.3f}</td>" in html


def _two_sections():
    page = Page("t")
    page.section("first", "First")
    page.paragraph(f"a user's </section> {EVIL}")  # escaped: never taken for a section's end
    page.section("second", "Second")
    return page.render()


def test_every_section_links_back_to_the_contents():
    html = _two_sections()
    assert '<nav id="contents" aria-label="Contents">' in html
    ends = re.findall(r'<p class="back"><a href="#contents">↑ Contents</a></p></section>', html)
    assert len(ends) == 2 and html.count("</section>") == 2
    assert "&lt;/section&gt;" in html
    single = Page("one")
    single.section("only", "Only")
    assert "#contents" not in single.render()  # one section: no contents, no link back


def test_print_style_hides_the_links_back():
    html = _two_sections()
    style = html[html.index("<style>") : html.index("</style>")]
    assert "@media print" in style and ".back { display: none; }" in style


def _net_x():
    return ConvReluLinear(hidden=3), np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)


def test_repr_html_of_a_comparison():
    net, x = _net_x()
    c = xk.compare(net, x, methods=["saliency", "occlusion"], metrics=["deletion"])
    html = c._repr_html_()
    assert _is_fragment(html) and "Comparison of 2 methods" in html
    assert f"<td>saliency</td><td>{c.table[0]['deletion']:.3f}</td>" in html
    assert f"Best first: deletion: {', '.join(c.rank('deletion'))}" in html


def test_repr_html_of_a_curve():
    net, x = _net_x()
    curve = xk.metrics.deletion(net, x, xk.explain(net, x, method="saliency"))
    html = curve._repr_html_()
    assert _is_fragment(html) and f"<td>area</td><td>{curve.area:.3f}</td>" in html


def test_repr_html_of_an_attack():
    net, x = _net_x()
    attack = xk.metrics.attack_explanation(net, x, "saliency", epsilon=0.05, steps=2)
    html = attack._repr_html_()
    assert _is_fragment(html) and "Attack on the saliency map" in html
    assert f"<td>{attack.top_k_intersection:.3f}</td>" in html


def test_repr_html_of_importance_lists_the_most_important_first():
    rows = np.random.default_rng(1).random((50, 3))
    imp = xk.permutation_importance(
        lambda b: np.stack([1 - b[:, 0], b[:, 0]], axis=1), rows, (rows[:, 0] > 0.5).astype(int),
        feature_names=["size", EVIL, "c"],
    )  # fmt: skip
    html = imp._repr_html_()
    assert _is_fragment(html) and "<td>size</td>" in html and "&lt;script&gt;" in html
    assert html.index("<td>size</td>") < html.index("<td>c</td>")  # most important first


def test_repr_html_of_sanity_result():
    net = ConvReluLinear(hidden=3)
    X = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    r = xk.sanity_check(net, X, "saliency", batch=True)
    html = r._repr_html_()
    assert _is_fragment(html) and "Sanity check · saliency" in html
    assert f'<span class="badge {"pass" if r.passed else "fail"}">' in html


def _html_results() -> set[type]:
    found, todo = set(), [HTMLRepr]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("xaikit.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_result_with_html_has_a_renderer():
    assert _html_results() == set(RENDERERS)


def test_renderer_is_chosen_by_class_not_by_name():
    class Curve:  # the name of a result class, but not the class: shown as its repr
        def __repr__(self) -> str:
            return f"Curve({EVIL})"

    assert result_html(Curve()) == f"<pre>Curve({escape(EVIL)})</pre>"


def test_a_subclass_renders_as_its_result_class():
    class MyCurve(xk.metrics.Curve):
        pass

    curve = MyCurve("deletion", np.array([0.0, 1.0]), np.array([1.0, 0.0]), 0.5, 1)
    assert "<td>area</td><td>0.500</td>" in curve._repr_html_()


def test_attack_result_repr_shows_arrays_by_shape():
    net, x = _net_x()
    attack = xk.metrics.attack_explanation(net, x, "saliency", epsilon=0.05, steps=2)
    text = repr(attack)
    assert text.startswith("AttackResult(method='saliency', epsilon=0.05, k=")
    assert "x_adv=array(shape=(1, 8, 8), dtype=float32)" in text
    assert "original=array(shape=(8, 8)" in text and len(text) < 700


def test_importance_repr_shows_arrays_by_shape():
    imp = xk.Importance(["a", "b"], np.ones((2, 5)), 0.9, "accuracy")
    assert repr(imp) == (
        "Importance(feature_names=['a', 'b'], importances=array(shape=(2, 5), dtype=float64), "
        "baseline_score=0.9, scoring='accuracy')"
    )
