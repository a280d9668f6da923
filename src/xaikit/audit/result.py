"""The audit's result: findings, class maps, SpRAy clusters; saved as ``.npz`` + JSON, plotted."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaikit import _files
from xaikit._plotting import new_figure
from xaikit._repr import HTMLRepr
from xaikit.audit import _store

FORMAT = "xaikit-audit"
VERSION = 1
_SAVED = re.compile(r"^audit\.(npz|json)$")
_FINDING_FIELDS = (
    "target",
    "region",
    "relevance_share",
    "other_share",
    "consistency",
    "n_images",
    "images",
    "kind",
    "cluster",
    "background_share",
    "transplant_rate",
    "control_rate",
    "sameness",
)


@dataclass
class Finding:
    """A suspected shortcut: class ``target`` (or its SpRAy ``cluster``) relies on ``region``.

    ``region`` (y0, x0, y1, x1) in input pixels, exclusive ends; ``relevance_share`` the mean
    share of the group's relevance in it, ``other_share`` the other classes' share there (for
    a background finding: the median shares on background pixels, the group's and the other
    classes');
    ``consistency`` the share of the group's images whose own share there exceeds that of 95%
    of the other classes' images; ``n_images`` the group's size; ``images`` indices of example
    items (most relevance in the region first), with ``example_inputs`` and ``example_maps``.
    ``kind``: ``"region"`` (a small box) or ``"background"`` (relevance off the object);
    ``background_share``: the median share of the group's relevance on background pixels.
    ``transplant_rate``: the share of other classes' images the model calls ``target`` once the
    region is pasted into them from the group's images; ``control_rate``: the same with the
    region taken from other images (``None`` when the test did not run: background findings,
    or an analysis without the model); ``sameness``: how alike the region looks across the
    group's images, 1 for a pasted pattern, near 0 for strokes that move.
    """

    target: int
    region: tuple[int, int, int, int]
    relevance_share: float
    other_share: float
    consistency: float
    n_images: int
    images: list[int]
    kind: str = "region"
    cluster: int | None = None
    background_share: float = 0.0
    transplant_rate: float | None = None
    control_rate: float | None = None
    sameness: float | None = None
    example_inputs: np.ndarray | None = field(default=None, repr=False)
    example_maps: np.ndarray | None = field(default=None, repr=False)

    def transplant_text(self) -> str:
        """The transplant test as "41% (control 2%)", or "-" where it did not run."""
        if self.transplant_rate is None:
            return "-"
        return f"{self.transplant_rate:.0%} (control {self.control_rate:.0%})"

    def __str__(self) -> str:
        who = f"class {self.target}" + (
            f", cluster {self.cluster}" if self.cluster is not None else ""
        )
        where = "the background" if self.kind == "background" else f"region {self.region}"
        text = (
            f"{who}: {self.relevance_share:.0%} of the relevance on {where} "
            f"(other classes {self.other_share:.0%}); consistent in {self.consistency:.0%} of "
            f"{self.n_images} images"
        )
        if self.transplant_rate is not None:
            text += (
                f"; pasted into other classes' images it makes {self.transplant_rate:.0%} of "
                f"them class {self.target} (control {self.control_rate:.0%})"
            )
        return text


@dataclass
class Cluster:
    """SpRAy for one class: ``k`` strategies (eigengap), a cluster id per image of the class
    (``indices`` into the data), the smallest Laplacian ``eigenvalues``, a 2-D ``embedding``."""

    target: int
    k: int
    labels: np.ndarray
    eigenvalues: np.ndarray
    embedding: np.ndarray
    indices: np.ndarray


@dataclass
class Audit(HTMLRepr):
    """Result of :func:`xaikit.audit`.

    ``findings`` (most convincing first); ``class_maps`` class -> mean normalised relevance map
    (pooled cells); ``region_shares`` class -> share per cell of a 3x3 grid; ``clusters`` class
    -> :class:`Cluster`; ``maps`` (N, h, w) the pooled signed maps; ``background`` (N, h, w)
    share of background pixels per cell; ``targets``/``predictions``/``labels`` per item;
    ``pool`` input pixels per map cell; ``input_shape`` (H, W); ``info`` run and criteria
    (``info["candidates"]``: every region the analysis tested, with its numbers and decision).
    ``evidence``: distinctive evidence, regions a class relies on that are not a pasted
    pattern (a digit's own stroke, varying from image to image): shown to look at, not
    findings.
    """

    findings: list[Finding]
    class_maps: dict[int, np.ndarray]
    region_shares: dict[int, np.ndarray]
    clusters: dict[int, Cluster]
    maps: np.ndarray
    background: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray | None
    pool: int
    input_shape: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)
    evidence: list[Finding] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"Audit({len(self.targets)} items, {len(self.class_maps)} classes, "
            f"{len(self.findings)} findings, {len(self.evidence)} distinctive evidence)"
        )

    def summary(self) -> str:
        """One line per finding (or that there is none), then the distinctive evidence."""
        lines = [str(f) for f in self.findings] or ["no shortcut found"]
        if self.evidence:
            lines.append("distinctive evidence (the class's own features, not shortcuts):")
            lines += [f"  {e}" for e in self.evidence]
        return "\n".join(lines)

    # ------------------------------------------------------------------ save / load

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``audit.npz`` (arrays) and ``audit.json`` (everything else) into ``directory``.

        No pickle; each file is written to a temporary name and renamed into place, the arrays
        first; ``audit.json`` records the arrays' SHA-256, so :meth:`load` refuses a pair of
        files from two different saves (one cut short) rather than mixing them.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in _files.stale_temp_files(directory, _SAVED):
            leftover.unlink(missing_ok=True)
        arrays: dict[str, np.ndarray] = {
            "maps": self.maps,
            "background": self.background,
            "targets": self.targets,
            "predictions": self.predictions,
        }
        if self.labels is not None:
            arrays["labels"] = self.labels
        for c, m in self.class_maps.items():
            arrays[f"class_map_{c}"] = m
            arrays[f"region_shares_{c}"] = self.region_shares[c]
        for c, cl in self.clusters.items():
            for name in ("labels", "eigenvalues", "embedding", "indices"):
                arrays[f"cluster_{c}_{name}"] = getattr(cl, name)
        listed = {}
        for which, entries in (("finding", self.findings), ("evidence", self.evidence)):
            listed[which] = []
            for i, f in enumerate(entries):
                listed[which].append({k: getattr(f, k) for k in _FINDING_FIELDS})
                for name in ("example_inputs", "example_maps"):
                    if getattr(f, name) is not None:
                        arrays[f"{which}_{i}_{name}"] = getattr(f, name)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        payload = buffer.getvalue()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "arrays_sha256": "sha256:" + hashlib.sha256(payload).hexdigest(),
            "findings": listed["finding"],
            "evidence": listed["evidence"],
            "classes": sorted(self.class_maps),
            "clusters": {str(c): cl.k for c, cl in self.clusters.items()},
            "pool": self.pool,
            "input_shape": list(self.input_shape),
            "info": self.info,
        }
        _store.write_bytes(directory / "audit.npz", payload)
        _store.write_bytes(directory / "audit.json", json.dumps(meta, indent=2).encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Audit:
        """Read an audit written by :meth:`save`.

        Raises a ValueError naming ``directory`` when the files are damaged, declare more than
        ``XAIKIT_MAX_LOAD_BYTES`` (see docs/cli.md), or come from two different saves.
        """
        directory = Path(directory)
        try:
            meta = json.loads(_files.read_text(directory / "audit.json", name="directory"))
        except json.JSONDecodeError as err:
            raise ValueError(f"directory: {str(directory)!r} has a damaged audit.json") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"directory: {str(directory)!r} holds no saved audit")
        npz = directory / "audit.npz"
        expected = meta.get("arrays_sha256")  # absent in files of xaikit before this check
        if expected is not None and _files.file_sha256(npz) != expected:
            raise ValueError(
                f"directory: audit.json and audit.npz in {str(directory)!r} come from two "
                "different saves (one was cut short); save the audit again"
            )
        a = _files.load_npz(npz, name="directory")
        try:
            return cls._from_saved(meta, a)
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # edited or damaged
            raise ValueError(
                f"directory: {str(directory)!r} holds a damaged saved audit "
                f"({type(err).__name__}: {err})"
            ) from err

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], a: dict[str, np.ndarray]) -> Audit:
        listed: dict[str, list[Finding]] = {}
        for which, key in (("finding", "findings"), ("evidence", "evidence")):
            listed[which] = [
                Finding(
                    **dict(f, region=tuple(f["region"])),
                    example_inputs=a.get(f"{which}_{i}_example_inputs"),
                    example_maps=a.get(f"{which}_{i}_example_maps"),
                )
                for i, f in enumerate(meta.get(key, []))  # no "evidence" in older saves
            ]
        classes = [int(c) for c in meta["classes"]]
        clusters = {
            int(c): Cluster(
                int(c),
                int(k),
                *(a[f"cluster_{c}_{n}"] for n in ("labels", "eigenvalues", "embedding", "indices")),
            )
            for c, k in meta["clusters"].items()
        }
        return cls(
            findings=listed["finding"],
            evidence=listed["evidence"],
            class_maps={c: a[f"class_map_{c}"] for c in classes},
            region_shares={c: a[f"region_shares_{c}"] for c in classes},
            clusters=clusters,
            maps=a["maps"],
            background=a["background"],
            targets=a["targets"],
            predictions=a["predictions"],
            labels=a.get("labels"),
            pool=int(meta["pool"]),
            input_shape=tuple(meta["input_shape"]),
            info=meta["info"],
        )

    # ------------------------------------------------------------------ display

    def plot(self, *, max_findings: int = 3):
        """A Figure: every class's mean relevance map (blue boxes on the findings' regions, dashed
        grey ones on distinctive evidence), then per finding its example images with their
        maps and the class's SpRAy embedding."""
        from matplotlib.patches import Rectangle

        classes = sorted(self.class_maps)
        shown = self.findings[:max_findings]
        cols = max(len(classes), 5)
        fig = new_figure((1.6 * cols, 1.8 * (1 + len(shown))))
        grid = fig.add_gridspec(1 + len(shown), cols)
        h, w = self.input_shape
        for j, c in enumerate(classes):
            ax = fig.add_subplot(grid[0, j])
            ax.imshow(self.class_maps[c], cmap="Reds", extent=(0, w, h, 0))
            ax.set_title(f"class {c}", fontsize=8)
            ax.set_axis_off()
            for f in self.findings:
                if f.target == c:
                    y0, x0, y1, x1 = f.region
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="blue"))
            for e in self.evidence:  # distinctive evidence: dashed grey, not a finding
                if e.target == c:
                    y0, x0, y1, x1 = e.region
                    ax.add_patch(
                        Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="grey", ls="--")
                    )
        for row, f in enumerate(shown, start=1):
            inputs = f.example_inputs if f.example_inputs is not None else []
            for j in range(min(len(inputs), cols - 1)):
                ax = fig.add_subplot(grid[row, j])
                image = np.asarray(inputs[j])
                image = image.mean(axis=0) if image.ndim == 3 else image
                ax.imshow(image, cmap="gray", extent=(0, w, h, 0))
                ax.imshow(
                    np.maximum(f.example_maps[j], 0), cmap="Reds", alpha=0.5, extent=(0, w, h, 0)
                )
                y0, x0, y1, x1 = f.region
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="blue"))
                ax.set_title(f"item {f.images[j]}", fontsize=7)
                ax.set_axis_off()
            cl = self.clusters.get(f.target)
            ax = fig.add_subplot(grid[row, cols - 1])
            if cl is not None and len(cl.indices):
                ax.scatter(cl.embedding[:, 0], cl.embedding[:, 1], c=cl.labels, s=6, cmap="tab10")
            ax.set_title(f"SpRAy class {f.target} (k={cl.k if cl else 1})", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(self.summary(), fontsize=8)
        return fig
