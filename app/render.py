"""Pure functions from engine events to what the page shows: figures, grids, status text.

Nothing here imports Gradio, so it is tested directly; the UI only places the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import base64
import html
import io
import re

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

from pdd_engine import events as E
from pdd_engine.errors import one_line

NEW, FROZEN = (255, 140, 0), (150, 150, 150)
GRID_TOP = 4  # the run's grid is a page element of its own: no caption overlay to leave room for
LAYOUT = dict(height=330, margin=dict(l=55, r=10, t=10, b=45), template="plotly_white",
              legend=dict(orientation="h", x=0, y=1.02, yanchor="bottom"))
PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52"]


# Every ASCII punctuation sign Markdown may give a meaning, bar the "&" and ";" of the entities html.escape
# writes: with ":" and "/" a bare URL is no link, with "=" a line no heading, with "$" and "^" no formula.
MARKDOWN_SIGNS = re.compile(r"""[!"#$%'()*+,\-./:=?@\[\\\]^_`{|}~]""")
PLAIN_CHARS = 2000  # outside text on the page is bounded (a class folder's name can be 60,000 characters)
CLASS_CHARS = 80  # a class name in each image's hover title (one per image of the grid)


def plain(text: object, limit: int = PLAIN_CHARS) -> str:
    """Text from elsewhere (a shared bundle's manifest, an uploaded file's name, an error quoting either) as
    literal text on one line, in a Markdown output or an HTML one alike: no markup, link, image, heading, code
    block or line of its own (each sign Markdown could read is a numeric character reference, which Markdown
    shows as that character and never reads as markup), and no character the page's JSON stream cannot carry
    (a lone surrogate broke a visitor's whole page)."""
    return MARKDOWN_SIGNS.sub(lambda m: f"&#{ord(m.group())};", html.escape(one_line(text, limit), quote=False))


@dataclass
class RunView:
    """What the page knows about one run, folded from its event stream."""

    stages: int = 0
    method: str = ""
    run_key: str = ""
    current: int = 0
    cached_stages: set = field(default_factory=set)
    iteration: int = 0
    iterations: int = 0
    phase: str = "stage"  # what the iterations count: a PDD stage or the base method alone (P = 1)
    losses: dict = field(default_factory=dict)  # stage -> [(iteration, loss)]
    images: Optional[E.StageImages] = None
    evals: dict = field(default_factory=dict)  # stage -> StageEvaluated
    messages: list = field(default_factory=list)
    finished: dict = field(default_factory=dict)  # stage -> StageFinished
    done: Optional[E.Done] = None
    exported: Optional[E.Exported] = None
    failed: Optional[E.Failed] = None
    stopped: Optional[E.Stopped] = None

    def apply(self, ev) -> None:
        if isinstance(ev, E.RunStarted):
            self.stages, self.method, self.run_key = ev.stages, ev.config["method"], ev.run_key
        elif isinstance(ev, E.StageStarted):
            self.current, self.iteration = ev.stage, 0
            if ev.cached:
                self.cached_stages.add(ev.stage)
        elif isinstance(ev, E.Progress):
            self.iteration, self.iterations, self.phase = ev.iteration, ev.iterations, ev.phase
            if ev.phase == "stage":
                self.losses.setdefault(ev.stage, []).append((ev.iteration, ev.loss))
        elif isinstance(ev, E.StageImages):
            self.images = ev
        elif isinstance(ev, E.StageEvaluated):
            self.evals[ev.stage] = ev
        elif isinstance(ev, E.StageFinished):
            self.finished[ev.stage] = ev
        elif isinstance(ev, E.Message):
            self.messages.append(f"{ev.where}: {ev.text}")
        elif isinstance(ev, E.Exported):
            self.exported = ev
        elif isinstance(ev, E.Done):
            self.done = ev
        elif isinstance(ev, E.Failed):
            self.failed = ev
        elif isinstance(ev, E.Stopped):
            self.stopped = ev

    @property
    def warnings(self) -> list[str]:
        """The engine's run-time warnings ("stage 1: warning: ..."), each once, in order: a result that may be
        worse than it looks (an unstable MTT matching) must reach the page, not only the log."""
        return list(dict.fromkeys(m for m in self.messages if m.split(": ", 1)[-1].startswith("warning: ")))

    @classmethod
    def of(cls, events: list) -> "RunView":
        view = cls()
        for ev in events:
            view.apply(ev)
        return view

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: finished stages plus the current stage's iterations."""
        if not self.stages:
            return 0.0
        if self.done:
            return 1.0
        part = self.iteration / self.iterations if self.iterations else 0.0
        # never 100% before Done: evaluation still follows the last iteration
        return min(0.99, (len(self.finished) + (part if self.current not in self.finished else 0)) / self.stages)


def status_markdown(view: RunView, state: str, position: int = 0, timing: Optional[tuple] = None) -> str:
    """The one-line status, then the run's warnings, if any; ``timing``: (seconds into this stage, seconds its
    iterations still need or None), measured by the job manager from the events' arrival."""
    return status_line(view, state, position, timing) + warnings_markdown(
        [w.replace("warning: ", "", 1) for w in view.warnings])


MAX_WARNINGS = 3  # a status line stays readable; the rest are counted


def warnings_markdown(warnings: list[str]) -> str:
    """Warnings ("stage 1: ...") under a line of the page, as literal text: at most MAX_WARNINGS, then a count."""
    more = len(warnings) - MAX_WARNINGS
    return "".join(f"\n\n**Warning** — {plain(w)}" for w in warnings[:MAX_WARNINGS]) + (
        f"\n\n(and {more} more warning(s))" if more > 0 else "")


def status_line(view: RunView, state: str, position: int, timing: Optional[tuple]) -> str:
    if state == "queued":
        return f"**Queued** — position {position} in line. The run starts when an engine slot is free."
    if view.failed:
        return f"**Failed** — {plain(view.failed.message)}"  # engine text can quote a visitor's input
    if view.stopped:
        kept = len(view.finished)
        return f"**Stopped** — {kept} finished stage(s) are cached; press Resume to continue from them."
    if view.done:
        computed = view.done.computed_stages
        how = "all stages served from the cache" if not computed else f"computed stage(s) {computed}"
        if computed and view.done.executor != "local":
            how += f", units on the {view.done.executor} executor"
        return f"**Done** in {view.done.seconds:.1f} s ({how}). {final_line(view.done.accuracies[-1], view.method)}"
    if not view.stages:
        return "**Starting** the engine…"
    stage = view.current
    cached = " (from cache)" if stage in view.cached_stages else ""
    if view.iteration and view.phase == "base":  # after the stage's images: the comparison's own iterations
        detail = (f"the base method alone (P=1) for comparison: iteration {view.iteration}/{view.iterations}{clock(timing)}"
                  if view.iteration < view.iterations else
                  "evaluating the base method alone (P=1)" + (", then its images trained as long as PDD" if stage > 1 else ""))
    elif view.images is not None and view.images.stage == stage:
        detail = "evaluating (curriculum networks and the random-subset baseline)"
    elif view.iteration:
        detail = f"iteration {view.iteration}/{view.iterations}{clock(timing)}"
    else:
        detail = "preparing" + (f" — {plain(view.messages[-1].split(': ', 1)[-1])}" if view.messages else "")
    return f"**Running** — stage {stage}/{view.stages}{cached}: {detail}"


def clock(timing: Optional[tuple]) -> str:
    """" · 34 s into this stage, iterations done in about 23 s (its evaluation follows)", or ""."""
    if timing is None:
        return ""
    since, left = timing
    rest = f", iterations done in about {left:.0f} s (its evaluation follows)" if left is not None else ""
    return f" · {since:.0f} s into this stage{rest}"


def final_line(last: dict, method: str) -> str:
    """PDD's final accuracy beside the base method alone (P = 1), its images trained as long as PDD's
    curriculum, and the random curriculum; then how PDD stands against each comparison."""
    def pm(mean, std):
        return f"{100 * mean:.1f} ± {100 * std:.1f} %"
    m = method.upper()
    shown = [(f"{m} alone (P=1)", "base"), (f"{m} alone trained as long", "base_epochs")]
    base = "".join(f", {label} {pm(last[f'{k}_mean'], last[f'{k}_std'])}" for label, k in shown
                   if last.get(f"{k}_mean") is not None)
    verdict = ""
    for label, k in shown:
        if last.get(f"{k}_mean") is None:
            continue
        d = 100 * (last["mean"] - last[f"{k}_mean"])
        close = abs(d) <= 100 * max(last["std"], last[f"{k}_std"])
        verdict += (f" PDD is {abs(d):.1f} points {'ahead of' if d >= 0 else 'behind'} {label}"
                    f"{' (within the std: no clear difference)' if close else ''}.")
    return (f"Final accuracy: PDD+{m} {pm(last['mean'], last['std'])}{base}, "
            f"random real subset {pm(last['random_mean'], last['random_std'])} (same IPC and curriculum).{verdict}")


def progress_html(view: RunView) -> str:
    cells = []
    for s in range(1, max(view.stages, 1) + 1):
        if s in view.finished:
            colour, label = "#2e7d32", "cached" if s in view.cached_stages else f"done · {view.finished[s].seconds:.0f} s"
        elif s == view.current and not (view.done or view.failed or view.stopped):
            colour, label = "#f57c00", f"{int(100 * view.iteration / max(view.iterations, 1))}%"
        else:
            colour, label = "#9e9e9e", "pending"
        cells.append(f'<div class="pdd-stage" style="background:{colour}">stage {s}<br><small>{label}</small></div>')
    pct = int(100 * view.fraction)
    return (f'<div class="pdd-progress"><div class="pdd-bar"><div style="width:{pct}%"></div></div>'
            f'<div class="pdd-stages">{"".join(cells)}</div>{gains_html(view)}</div>')


def gains_html(view: RunView) -> str:
    """After each evaluated stage, its accuracies and PDD's gain, written out: over the random
    curriculum always, over the base method alone (and its images trained as long) where computed."""
    rows = []
    name = view.method.upper()
    pm = lambda m, s: "–" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    for s in sorted(view.evals):
        e = view.evals[s]
        gain = f"{100 * (e.mean - e.random_mean):+.1f} vs random"
        if e.base_mean is not None:
            gain += f", {100 * (e.mean - e.base_mean):+.1f} vs {name} alone"
        if e.base_epochs_mean is not None:
            gain += f", {100 * (e.mean - e.base_epochs_mean):+.1f} vs same epochs"
        rows.append(f"<tr><td>{s}</td><td>{e.images_per_class}</td><td>{pm(e.mean, e.std)}</td>"
                    f"<td>{pm(e.base_mean, e.base_std)}</td><td>{pm(e.base_epochs_mean, e.base_epochs_std)}</td>"
                    f"<td>{pm(e.random_mean, e.random_std)}</td><td>{gain}</td></tr>")
    if not rows:
        return ""
    return (f'<table class="pdd-gains"><tr><th>stage</th><th>IPC</th><th>PDD+{name} %</th><th>{name} alone %</th>'
            f'<th>{name} alone, same epochs %</th><th>random %</th><th>PDD gain (points)</th></tr>{"".join(rows)}</table>')


def grid_image(ev: Optional[E.StageImages], current: int = 0) -> Optional[Image.Image]:
    """One row per class; this stage's images framed orange, frozen earlier ones grey."""
    if ev is None:
        return None
    running = current > ev.stage  # a later stage is being distilled: everything shown is frozen now
    new = np.zeros_like(ev.new) if running else ev.new
    caption = (f"stages 1-{ev.stage}, frozen while stage {current} is distilled" if running
               else f"stage {ev.stage}: {int(ev.new.sum())} new images (orange)")
    return class_grid(ev.images, ev.labels, ev.classes, [NEW if n else FROZEN for n in new], caption, top=GRID_TOP)


def grid_html(ev: Optional[E.StageImages], current: int = 0) -> str:
    """:func:`grid_image` as a page element whose every cell names, on hover, the stage it was
    distilled in, its class and its index in that class (a tooltip: no script needed)."""
    if ev is None:
        return ('<div class="pdd-grid-empty">The synthetic images appear here as soon as the first stage starts: '
                'a row per class, this stage\'s images framed orange, earlier (frozen) stages grey.</div>')
    img = grid_image(ev, current)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    w, h = img.size
    cells = []
    for i, c, k, x0, y0, cell in grid_cells(ev.labels, len(ev.classes), top=GRID_TOP):
        stage = f"stage {ev.origin[i]}" if ev.origin is not None else ("this stage" if ev.new[i] else "an earlier stage")
        title = html.escape(f"{stage} · class {one_line(ev.classes[c], CLASS_CHARS)} · image {k + 1}")
        cells.append(f'<span title="{title}" style="left:{100 * x0 / w:.3f}%;top:{100 * y0 / h:.3f}%;'
                     f'width:{100 * cell / w:.3f}%;height:{100 * cell / h:.3f}%"></span>')
    alt = html.escape(f"synthetic images of stages 1 to {ev.stage}, a row per class")
    return (f'<div class="pdd-grid" style="max-width:{w}px"><img alt="{alt}" src="data:image/png;base64,'
            f'{base64.b64encode(buf.getvalue()).decode()}">{"".join(cells)}</div>')


def grid_cells(labels: np.ndarray, classes: int, cell: int = 40, pad: int = 3, label_w: int = 56, top: int = 28):
    """Where each image of a class-row grid goes: (index, class, place in its row, x, y, cell size)."""
    for c in range(classes):
        for k, i in enumerate(np.flatnonzero(labels == c)):
            yield i, c, k, label_w + pad + k * (cell + pad), top + pad + c * (cell + pad), cell


def class_grid(images: np.ndarray, labels: np.ndarray, classes: list, frames: Optional[list] = None, caption: str = "",
               cell: int = 40, pad: int = 3, label_w: int = 56, top: int = 28) -> Image.Image:
    """Images (N, H, W, C) uint8 in a row per class, each framed in ``frames[i]`` (grey if none).
    ``top`` leaves room for the caption Gradio overlays on the image's top-left corner; the grid's
    own caption goes below it, where that overlay cannot hide it on a narrow grid."""
    per_class = max(int(np.sum(labels == c)) for c in range(len(classes)))
    w = label_w + per_class * (cell + pad) + pad
    h = top + len(classes) * (cell + pad) + pad + 20
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w + pad, h - 16), caption, fill=(0, 0, 0))
    for c, name in enumerate(classes):
        draw.text((4, top + pad + c * (cell + pad) + cell // 2 - 6), str(name)[:8], fill=(0, 0, 0))
    for i, _, _, x0, y0, _ in grid_cells(labels, len(classes), cell, pad, label_w, top):
        px = images[i]
        img = Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).convert("RGB")
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=frames[i] if frames else FROZEN)
        canvas.paste(img.resize((cell - 4, cell - 4), Image.Resampling.NEAREST), (x0 + 2, y0 + 2))
    return canvas


def preview_image(p: dict) -> Optional[Image.Image]:
    """Real images per class of a dataset preview (the service's; None before a download)."""
    if p["images"] is None:
        return None
    shown = int(p["labels"].max()) + 1 if len(p["labels"]) else 0  # the first classes, where there are many
    more = f" (the first {shown} of {len(p['classes'])} classes)" if shown < len(p["classes"]) else ""
    return class_grid(p["images"], p["labels"], list(p["classes"])[:shown],
                      caption=f"{p['name']}: random real training images{more}")


def preview_markdown(p: dict) -> str:
    """A dataset's facts in two lines: what it is, and how large."""
    where = "on this machine" if p["availability"] == "offline" else "not on this machine: downloaded on first use (needs internet)"
    sizes = f"{p['train']:,} train" + (f" / {p['test']:,} test" if p["test"] is not None else "")
    per_class = p["train_per_class"]
    per = (f" ({min(per_class):,}–{max(per_class):,} per class)" if per_class and min(per_class) != max(per_class) else "")
    return (f"**{p['title']}** — {where}<br>{p['num_classes']} classes · {p['channels']} "
            f"channel{'s' if p['channels'] != 1 else ''} · {p['size']}×{p['size']} px · {sizes}{per}<br>"
            f"<small>{p['licence']}</small>")


def loss_figure(view: RunView) -> go.Figure:
    fig = go.Figure()
    offset = 0
    for stage in sorted(view.losses):
        pts = view.losses[stage]
        fig.add_trace(go.Scatter(x=[offset + it for it, _ in pts], y=[v for _, v in pts], mode="lines",
                                 name=f"stage {stage}", line=dict(color=PALETTE[(stage - 1) % len(PALETTE)])))
        offset += max(it for it, _ in pts)
    fig.update_layout(xaxis_title="iteration (all stages)", yaxis_title=f"{view.method.upper()} loss", **LAYOUT)
    return fig


def accuracy_figure(view: RunView) -> go.Figure:
    """Accuracy vs cumulative IPC (± std): PDD, the base method alone (P = 1) at the same IPC where the
    run computed it (and its images trained for as many epochs as PDD's curriculum), and the random real
    subset trained with the same curriculum."""
    stages = sorted(view.evals)
    fig = go.Figure()
    if stages:
        evs = [view.evals[s] for s in stages]
        based = [e for e in evs if e.base_acc is not None]
        trace = lambda name, es, mean, std, **kw: fig.add_trace(go.Scatter(  # noqa: E731
            x=[e.images_per_class for e in es], y=[100 * getattr(e, mean) for e in es], name=name,
            error_y=dict(type="data", array=[100 * getattr(e, std) for e in es]), **kw))
        trace(f"PDD+{view.method.upper()}", evs, "mean", "std", mode="lines+markers")
        if based:
            trace(f"{view.method.upper()} alone (P=1)", based, "base_mean", "base_std",
                  mode="lines+markers" if len(based) > 1 else "markers", marker=dict(size=11, symbol="diamond"))
        longer = [e for e in evs if e.base_epochs_acc is not None]
        if longer:
            trace(f"{view.method.upper()} alone, trained as long as PDD", longer, "base_epochs_mean", "base_epochs_std",
                  mode="lines+markers" if len(longer) > 1 else "markers", marker=dict(size=11, symbol="square"))
        trace("random real subset", evs, "random_mean", "random_std", mode="lines+markers", line=dict(dash="dot"))
    fig.update_layout(xaxis_title="images per class so far (cumulative)", yaxis_title="test accuracy %", **LAYOUT)
    if stages:
        fig.update_xaxes(tickmode="array", tickvals=[view.evals[s].images_per_class for s in stages])
    return fig


def evaluation_figure(manifest: dict, results: list, arch: str) -> go.Figure:
    """A bundle's accuracy per cumulative IPC on each architecture: as exported (on ``arch``), then each
    re-evaluation."""
    entries = manifest["stage_entries"]
    x = [e["cumulative_images_per_class"] for e in entries]
    fig = go.Figure()
    if all(e.get("accuracy") for e in entries):
        fig.add_trace(go.Scatter(x=x, y=[100 * e["accuracy"]["mean"] for e in entries], mode="lines+markers",
                                 error_y=dict(type="data", array=[100 * e["accuracy"]["std"] for e in entries]),
                                 name=f"recorded in the bundle ({arch})", line=dict(dash="dot")))
    for arch, accs in results:
        fig.add_trace(go.Scatter(x=x, y=[100 * float(np.mean(a)) for a in accs], mode="lines+markers",
                                 error_y=dict(type="data", array=[100 * float(np.std(a)) for a in accs]),
                                 name=arch or "same as exported"))
    fig.update_layout(xaxis_title="images per class (cumulative)", yaxis_title="test accuracy %", **LAYOUT)
    fig.update_xaxes(tickmode="array", tickvals=x)
    return fig


def result_figure(row: dict) -> go.Figure:
    """One benchmark row's per-stage curves: PDD after each stage and its own random curriculum (mean over
    seeds), with the base method alone (P = 1) and its images trained as long at the final IPC."""
    ipcs = [int(v) for v in row["stage_ipc"].split(";")] if row["stage_ipc"] else [int(row["ipc"])]
    series = lambda cell: [None if v in ("", "nan") else float(v) for v in cell.split(";")] if cell else []  # noqa: E731
    fig = go.Figure()
    name = row["method"].upper()
    fig.add_trace(go.Scatter(x=ipcs, y=series(row["stage_mean"]), mode="lines+markers", name=f"PDD+{name}",
                             error_y=dict(type="data", array=series(row["stage_std"]))))
    for label, (mean, std), symbol in ((f"{name} alone (P=1)", row["base"], "diamond"),
                                       (f"{name} alone, trained as long", row["epochs"], "square")):
        if mean is not None:
            fig.add_trace(go.Scatter(x=[ipcs[-1]], y=[mean], mode="markers", name=label, marker=dict(size=11, symbol=symbol),
                                     error_y=dict(type="data", array=[std])))
    fig.add_trace(go.Scatter(x=ipcs, y=series(row["stage_random"]), mode="lines+markers", name="random real subset",
                             line=dict(dash="dot")))
    fig.update_layout(xaxis_title="images per class so far (cumulative)", yaxis_title="test accuracy %", **LAYOUT)
    fig.update_xaxes(tickmode="array", tickvals=ipcs)
    return fig


def compare_figure(runs: list) -> go.Figure:
    """Finished runs (the service's records) on one accuracy plot: each run's per-stage curve."""
    fig = go.Figure()
    for r in runs:
        acc = r.stages
        fig.add_trace(go.Scatter(x=[a.ipc for a in acc], y=[100 * a.mean for a in acc], mode="lines+markers",
                                 error_y=dict(type="data", array=[100 * a.std for a in acc]), name=r.label))
    fig.update_layout(xaxis_title="images per class (cumulative)", yaxis_title="test accuracy %", **LAYOUT)
    return fig
