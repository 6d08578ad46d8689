"""`lapa ablation`: the ablation table and success plot from a folder of `lapa eval` JSON files.

Files are named `<row>_<family>_<seen|unseen>.json` (one `lapa eval --suite <family>` each); a row
is one training recipe. The table gives success with its 95% Wilson interval per family and
condition, and for failed episodes how often the gripper ended nearest the instructed block and
how far from it: where a recipe fails (grounding or the final approach) shows in those columns.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from lapa.errors import UserError

CONDITIONS = ("seen", "unseen")
PLOT_ROWS = 20  # tab20's distinct colours
_NAME = re.compile(r"^(?P<row>.+)_(?P<family>reach|push|pick|put)_(?P<cond>seen|unseen)\.json$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablation", help="ablation table (markdown + JSON) and success plot from lapa eval JSON files")
    p.add_argument("--evals", type=Path, required=True, help="folder of <row>_<family>_<seen|unseen>.json files")
    p.add_argument("--out", type=Path, required=True, help="writes results.md, results.json, success.png here")
    p.add_argument("--descriptions", type=Path, help="JSON {row: description} for the table")
    p.add_argument("--plot-last", type=int, default=PLOT_ROWS, metavar="N",
                   help="plot the table's last N rows (the latest round; default: %(default)s, one colour each)")
    p.set_defaults(func=_run)


def collect(folder: Path) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{row: {family: {condition: the family's block of the eval JSON + its command}}}."""
    rows: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for path in sorted(folder.glob("*.json")):
        m = _NAME.match(path.name)
        if m is None:
            continue
        doc = json.loads(path.read_text())
        block = doc["tasks"][m["family"]]
        rows.setdefault(m["row"], {}).setdefault(m["family"], {})[m["cond"]] = {
            **block, "command": doc.get("command", ""), "checkpoint": doc.get("checkpoint", "")}
    if not rows:
        raise UserError(f"no <row>_<family>_<seen|unseen>.json eval files in {folder}")
    return rows


def _cell(block: dict[str, Any] | None) -> str:
    if block is None:
        return "—"
    lo, hi = block["ci95"]
    rate, k, n = 100 * block["success_rate"], block["successes"], block["episodes"]
    return f"**{rate:.0f}%** ({k}/{n}, {100 * lo:.0f}-{100 * hi:.0f})"


def _diag(block: dict[str, Any] | None) -> str:
    if block is None:
        return "—"
    xy = block.get("failed_median_target_xy_m")
    z = block.get("failed_median_height_above_target_m")
    far = "—" if xy is None else f"{100 * xy:.1f} / {100 * z:.1f} cm"
    return f"{100 * block.get('nearest_is_target', 0):.0f}%, {far}"


def markdown(rows: dict[str, Any], descriptions: dict[str, str]) -> str:
    families = sorted({f for r in rows.values() for f in r}, key=["reach", "push", "pick", "put"].index)
    head = ["row", "recipe"] + [f"{f} {c}" for f in families for c in CONDITIONS] + \
        [f"{f}: ends nearest the target; failures' median xy / height" for f in families]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, fams in rows.items():
        cells = [name, descriptions.get(name, "")]
        cells += [_cell(fams.get(f, {}).get(c)) for f in families for c in CONDITIONS]
        cells += [_diag(fams.get(f, {}).get("seen")) for f in families]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, Any], path: Path, last: int = 0) -> list[str]:
    """Bars per family and condition; with `last`, only the last rows (a long table's legend would
    cover the bars). Returns the rows drawn."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if last > 0:
        rows = dict(list(rows.items())[-last:])
    families = sorted({f for r in rows.values() for f in r}, key=["reach", "push", "pick", "put"].index)
    bars = [(f, c) for f in families for c in CONDITIONS]
    fig = Figure(figsize=(max(6, 1.6 * len(bars)) + 3, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(len(rows), 1)
    colours = colormaps["tab20"].colors  # 20 distinct colours: one per row, no repeats below 21 rows
    for i, (name, fams) in enumerate(rows.items()):
        xs, ys, err = [], [], [[], []]
        for j, (f, c) in enumerate(bars):
            block = fams.get(f, {}).get(c)
            if block is None:
                continue
            p, (lo, hi) = block["success_rate"], block["ci95"]
            xs.append(j + i * width)
            ys.append(100 * p)
            err[0].append(100 * max(0.0, p - lo))
            err[1].append(100 * max(0.0, hi - p))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=name, color=colours[i % len(colours)])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(bars))], [f"{f}\n{c}" for f, c in bars])
    ax.set(ylabel="closed-loop success (%)", ylim=(0, 105), title="policy recipe ablation (95% Wilson intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return list(rows)


def _run(args: argparse.Namespace) -> int:
    rows = collect(args.evals)
    descriptions = json.loads(args.descriptions.read_text()) if args.descriptions else {}
    order = [r for r in descriptions if r in rows] + [r for r in rows if r not in descriptions]
    rows = {r: rows[r] for r in order}  # the descriptions file's order, then the rest
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(markdown(rows, descriptions))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "success.png", last=args.plot_last)
    print((args.out / "results.md").read_text())
    return 0
