"""The paper's tables rebuilt from MLflow runs, beside the published numbers (`workflow/reports/published.yaml`).

Every cell is computed from the runs that match it: evaluation runs joined with the parameters of the
pretraining run they evaluate. Only runs that differ by seed are aggregated: a cell fed by several seeds
(``train.seed`` of the pretraining, ``eval.seed`` of the evaluation) shows mean +- std; runs whose recipes
differ in anything else (another evaluation option, another pretraining parameter, an imported backbone) are
never averaged: the cell reads "conflict: <the differing keys>" and its CSV line names them. A cell with no
run is "n/a", never zero; the CSV lists the run ids behind every cell. Random-init baselines are not MEC
results and stay out of these tables (the summary compares with them). Percentages throughout (the runs log
fractions; ID switches stay counts). Cells no run fills still print, with our side n/a, so a campaign shows what
is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from evals import TRANSFER_DATASETS
from workflow.miniature import NOMINAL_TAG, SCALE_TAG

MISSING = "n/a"
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass
class Cell:
    """The values (percent) of one table cell and the runs they came from."""

    values: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    conflict: list[str] = field(default_factory=list)  # recipe keys in which the runs differ: nothing to average
    miniature: bool = False  # some run is a campaign's miniature: tiny budgets on generated data, not the paper's

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values and not self.conflict else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 and not self.conflict else math.nan

    def text(self, digits: int = 1) -> str:
        if not self.values:
            return MISSING
        if self.conflict:
            return "conflict: " + ", ".join(self.conflict)
        mark = " (miniature)" if self.miniature else ""
        if len(self.values) == 1:
            return f"{self.mean:.{digits}f}{mark}"
        return f"{self.mean:.{digits}f} +- {self.std:.{digits}f}{mark}"


def evaluation_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished evaluation runs with their pretraining run's params as ``pre:<key>`` columns."""
    if runs.empty or "tag:mec.stage" not in runs:
        return pd.DataFrame()
    from workflow.reports.tables import latest_evaluations

    finished = runs[runs["status"] == "FINISHED"]
    pre = finished[finished["tag:mec.stage"] == "pretrain"]
    if "tag:mec.baseline" in pre:  # an imported backbone (e.g. the released checkpoint) stays: it is MEC
        pre = pre[pre["tag:mec.baseline"] != "random_init"]
    ev = latest_evaluations(runs)
    if ev.empty or pre.empty:
        return pd.DataFrame()
    pre, ev = _as_nominal(pre, "param:"), _as_nominal(ev, "param:eval.")
    params = [c for c in pre.columns if c.startswith("param:")]
    tags = [f"tag:{t}" for t in PRETRAIN_RECIPE_TAGS if f"tag:{t}" in pre]
    parents = pre[["run_id", *params, *tags]].rename(columns={c: "pre:" + c[len("param:"):] for c in params}
                                                     | {c: "pre:" + c for c in tags})
    parents = parents.rename(columns={"run_id": "tag:mec.pretrain_run_id"})
    return ev.merge(parents, on="tag:mec.pretrain_run_id", how="inner")


def _as_nominal(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Runs of a campaign's miniature (`workflow.miniature`) read as what they stand for: each key of their
    ``mec.nominal`` tag replaces the ``<prefix><key>`` column (the campaign's value, as MLflow logs it: text)."""
    column = f"tag:{NOMINAL_TAG}"
    if column not in df or df[column].isna().all():
        return df
    df = df.copy()
    for index, text in df[column].items():
        if isinstance(text, str) and text:
            for key, value in json.loads(text).items():
                df.loc[index, f"{prefix}{key}"] = str(value)
    return df


# What a run's recipe is, for deciding which runs are seeds of one cell. Not recipe: the seeds themselves (the
# spread a cell shows), where a run wrote, how it was named, tracked and logged, and the values derived from the
# recipe (`derived.lr` of the batch size: a miniature run's are its own, while its keys read as the campaign's).
PRETRAIN_NOT_RECIPE = ("train.seed", "train.output_dir", "tracking.", "name", "source", "train.log_every",
                       "train.checkpoint_keep", "train.stop_after_steps", "data.num_workers",
                       "data.verify_checksums", "derived.")
EVAL_NOT_RECIPE = ("eval.seed", "eval.backbone")
PRETRAIN_RECIPE_TAGS = ("mec.source_backbone_sha256",)  # an imported backbone is its own recipe


def _recipe(df: pd.DataFrame) -> pd.DataFrame:
    """The recipe columns of evaluation rows as comparable text (a label split by its file name)."""
    columns = ["tag:mec.protocol"]
    columns += [c for c in df if c.startswith("pre:") and not c[len("pre:"):].startswith(PRETRAIN_NOT_RECIPE)]
    columns += [c for c in df if c.startswith("param:eval.") and c[len("param:"):] not in EVAL_NOT_RECIPE]
    present = [c for c in columns if c in df]
    recipe = df[present].astype(object).where(df[present].notna(), "").astype(str)
    if "param:eval.split" in recipe:
        recipe["param:eval.split"] = recipe["param:eval.split"].map(lambda p: Path(p).name if p else "")
    return recipe


def _recipe_key_name(column: str) -> str:
    return column.removeprefix("pre:").removeprefix("param:").replace("tag:", "tag ")


def _matching(df: pd.DataFrame, **equals: object) -> pd.DataFrame:
    for column, wanted in equals.items():
        if column not in df:
            return df.iloc[0:0]
        df = df[df[column].astype(str) == str(wanted)]
    return df


def _cell(df: pd.DataFrame, metric: str, scale: float = 100.0) -> Cell:
    """The runs of one cell: seeds of one recipe are aggregated; differing recipes are a conflict naming the keys.
    Values are the logged ones times ``scale`` (fractions to percent; 1 for counts)."""
    cell = Cell()
    if metric not in df:
        return cell
    df = df[df[metric].notna()]
    if df.empty:
        return cell
    recipe = _recipe(df)
    # One backbone evaluated twice by the same recipe (two evaluation names) is one value, not two seeds.
    seed = df["param:eval.seed"].astype(str) if "param:eval.seed" in df else pd.Series("", index=df.index)
    identity = pd.concat([df["tag:mec.pretrain_run_id"], seed, recipe], axis=1).loc[df.sort_values("start_time").index]
    df = df.loc[identity[~identity.duplicated(keep="last")].index]
    cell.values = [scale * float(v) for v in df[metric]]
    cell.run_ids = [str(r) for r in df["run_id"]]
    cell.conflict = [_recipe_key_name(c) for c in recipe if recipe.loc[df.index, c].nunique() > 1]
    cell.miniature = f"tag:{SCALE_TAG}" in df and bool((df[f"tag:{SCALE_TAG}"] == "miniature").any())
    return cell


def _split_name(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if "param:eval.split" not in df:
        return df.iloc[0:0]
    return df[df["param:eval.split"].astype(str).map(lambda p: Path(p).name) == name]


def _no_split(df: pd.DataFrame) -> pd.DataFrame:
    if "param:eval.split" not in df:
        return df
    return df[df["param:eval.split"].isna()]


Spec = tuple[str, str, Cell]  # (row, column, cell)
# Pretrained on ImageNet: an ImageFolder tree with the ImageNet recipe (Places365 has its own data name).
IMAGENET = {"pre:data.name": "imagefolder", "pre:data.augment": "imagenet"}


def _two_view(df: pd.DataFrame) -> pd.DataFrame:
    """Runs pretrained on two views only (Table 1 compares methods "with two 224 x 224 views"; multi-crop is
    Table 7's)."""
    if "pre:data.multi_crop.local_crops" not in df:
        return df
    return df[pd.to_numeric(df["pre:data.multi_crop.local_crops"], errors="coerce").fillna(0) == 0]


def table1(ev: pd.DataFrame) -> list[Spec]:
    """ImageNet linear top-1 by pretraining epochs, two views."""
    linear = _two_view(_imagenet_probes(_matching(ev, **{"tag:mec.protocol": "linear_probe"} | IMAGENET)))
    return [(str(e), "top1", _cell(_matching(linear, **{"pre:optim.epochs": e}), "linear/top1_best"))
            for e in (100, 200, 400, 800)]


def table2(ev: pd.DataFrame) -> list[Spec]:
    """Semi-supervised fine-tuning on SimCLR's 1% / 10% ImageNet subsets."""
    tuned = _matching(ev, **{"tag:mec.protocol": "finetune"} | IMAGENET)
    out = []
    for label, name in (("1%", "1percent"), ("10%", "10percent")):
        rows = _split_name(tuned, f"{name}.txt")
        out += [(label, "top1", _cell(rows, "finetune/top1_last")), (label, "top5", _cell(rows, "finetune/top5_last"))]
    return out


DETECTION_ROWS = (("VOC07+12", "voc0712"), ("VOC07", "voc07"), ("COCO", "coco"))  # row -> evals.detection recipe
DETECTION_SEARCH_METRIC = "detection/AP50"


def searched_lr(df: pd.DataFrame, metric: str = DETECTION_SEARCH_METRIC) -> pd.DataFrame:
    """The runs of the learning rate the paper's search would report: the highest mean ``metric`` over seeds.

    The paper fine-tunes detection with a "searched learning rate"; an experiment lists several (`grid:
    {lr: [...]}`), each repeated over seeds. Runs of one lr are seeds of one recipe; the others are the search.
    """
    if "param:eval.lr" not in df or df["param:eval.lr"].nunique(dropna=True) < 2 or metric not in df:
        return df
    means = df.groupby(df["param:eval.lr"].astype(str))[metric].mean()
    return df[df["param:eval.lr"].astype(str) == means.idxmax()]


def table3(ev: pd.DataFrame) -> list[Spec]:
    """Detection transfer (Detectron2, R50-C4): box AP50/AP/AP75 and COCO mask AP, at the searched lr."""
    rows = []
    detection = _matching(ev, **{"tag:mec.protocol": "detection"})
    for row, recipe in DETECTION_ROWS:
        runs = searched_lr(_matching(detection, **{"param:eval.recipe": recipe}))
        rows += [(row, column, _cell(runs, f"detection/{column}")) for column in ("AP50", "AP", "AP75")]
        if recipe == "coco":
            rows.append((row, "mask AP", _cell(runs, "detection/mask_AP")))
    return rows


# Table 4: (row, column) -> (evals.TRACKING_TASKS task, logged score, scale): fractions become percentages,
# ID switches stay a count.
TRACKING_CELLS = (
    (("SOT", "AUC"), ("sot", "AUC", 100.0)),
    (("VOS", "J-mean"), ("vos", "J_mean", 100.0)),
    (("MOT", "IDF1"), ("mot", "IDF1", 100.0)),
    (("MOT", "HOTA"), ("mot", "HOTA", 100.0)),
    (("MOTS", "IDF1"), ("mots", "IDF1", 100.0)),
    (("MOTS", "HOTA"), ("mots", "HOTA", 100.0)),
    (("PoseTrack", "IDF1"), ("posetrack", "IDF1", 100.0)),
    (("PoseTrack", "ID switches"), ("posetrack", "IDSW", 1.0)),
)


def table4(ev: pd.DataFrame) -> list[Spec]:
    """Tracking transfer (UniTrack's protocol, `evals.tracking`): one cell per task and score of Table 4."""
    tracking = _matching(ev, **{"tag:mec.protocol": "tracking"})
    return [(row, col, _cell(_matching(tracking, **{"param:eval.task": task}), f"tracking/{metric}", scale))
            for (row, col), (task, metric, scale) in TRACKING_CELLS]


ABLATIONS = (
    ("Taylor order", "loss.order"),
    ("eps", "loss.eps"),
    ("batch size", "optim.batch_size"),
    ("side", "loss.side"),
    ("teacher momentum", "model.teacher_momentum"),
)


def _swept(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of runs in a sweep of ``column``: runs whose recipe, ``column`` aside, is shared by a run at
    another value of ``column``. An ablation grid keeps every other knob at its default, so the eps grid's
    eps = 4 run is no row of the order ablation; the default recipe, in every grid, is one recipe whose runs a
    cell averages."""
    if df.empty or column not in df:
        return df.iloc[0:0]
    recipe = _recipe(df)
    rest = recipe[[c for c in recipe if c != column]].agg("|".join, axis=1)
    values = df[column].astype(str).groupby(rest).transform("nunique")
    return df[values >= 2]


def table5(ev: pd.DataFrame) -> list[Spec]:
    """Ablations: every value of each swept key, linear top-1 and kNN top-1 of the runs of its sweeps with that
    value (`_swept`).

    Only keys that take more than one value among the experiment's runs are shown (a grid swept them).
    """
    all_linear = _imagenet_probes(_matching(ev, **{"tag:mec.protocol": "linear_probe"}))
    all_knn = _matching(ev, **{"tag:mec.protocol": "knn"})
    rows = []
    for label, key in ABLATIONS:
        column = f"pre:{key}"
        linear, knn = _swept(all_linear, column), _swept(all_knn, column)
        values = sorted({str(v) for df in (linear, knn) if column in df for v in df[column].dropna()})
        if len(values) < 2:
            continue
        for value in values:
            row = f"{label} = {value}"
            rows.append((row, "linear top-1", _cell(_matching(linear, **{column: value}), "linear/top1_best")))
            rows.append((row, "kNN top-1", _cell(_matching(knn, **{column: value}), "knn/top1_k20")))
    return rows


def table7(ev: pd.DataFrame) -> list[Spec]:
    """800-epoch ImageNet linear top-1: the plain recipe, the large projector (8192-d), multi-crop (local views)."""
    linear = _imagenet_probes(_matching(ev, **{"tag:mec.protocol": "linear_probe", "pre:optim.epochs": 800} | IMAGENET))

    def numeric(column: str, default: float) -> pd.Series:
        if column not in linear:
            return pd.Series(default, index=linear.index)
        return pd.to_numeric(linear[column], errors="coerce").fillna(default)

    hidden, local = numeric("pre:model.projector_hidden", 2048), numeric("pre:data.multi_crop.local_crops", 0)
    return [("MEC", "top1", _cell(linear[(hidden < 8192) & (local == 0)], "linear/top1_best")),
            ("MEC (large projector)", "top1", _cell(linear[(hidden >= 8192) & (local == 0)], "linear/top1_best")),
            ("MEC (multi-crop)", "top1", _cell(linear[local > 0], "linear/top1_best"))]




def table8(ev: pd.DataFrame) -> list[Spec]:
    """Transfer classification on 11 data sets: linear evaluation (`transfer`) and fine-tuning (`transfer_finetune`)."""
    out = []
    for row, protocol in (("linear", "transfer"), ("finetune", "transfer_finetune")):
        transfer = _matching(ev, **{"tag:mec.protocol": protocol})
        for name in TRANSFER_DATASETS:
            out.append((row, name, _cell(_matching(transfer, **{"param:eval.dataset": name}), f"{protocol}/score")))
    return out


def _probed_on(df: pd.DataFrame, dataset: str, own: bool) -> pd.DataFrame:
    """Probes that read ``dataset`` (a ``datasets`` key, logged as ``eval.dataset``); ``own``: it is the runs'
    pretraining data, which a probe without the option reads too."""
    if "param:eval.dataset" not in df:
        return df if own else df.iloc[0:0]
    probed = df["param:eval.dataset"]
    return df[(probed.astype(str) == dataset) | (probed.isna() if own else False)]


def _imagenet_probes(df: pd.DataFrame) -> pd.DataFrame:
    """Linear probes of ImageNet-pretrained runs on all of ImageNet (no label split, no other data set)."""
    return _probed_on(_no_split(df), "imagenet", own=True)


def table9(ev: pd.DataFrame) -> list[Spec]:
    """Pretrained on Places365: linear top-1 on Places365 (the probe of the pretraining data) and on ImageNet (a
    probe with option ``dataset: imagenet``)."""
    linear = _no_split(_matching(ev, **{"tag:mec.protocol": "linear_probe", "pre:data.name": "places365"}))
    return [("MEC", "Places365", _cell(_probed_on(linear, "places365", own=True), "linear/top1_best")),
            ("MEC", "ImageNet", _cell(_probed_on(linear, "imagenet", own=False), "linear/top1_best"))]


TABLES: dict[str, Callable[[pd.DataFrame], list[Spec]]] = {
    "table1_linear_by_epochs": table1,
    "table2_semi_supervised": table2,
    "table3_detection": table3,
    "table4_tracking": table4,
    "table5_ablations": table5,
    "table7_strategies": table7,
    "table8_transfer": table8,
    "table9_places365": table9,
}


def load_published(path: Path = PUBLISHED_FILE) -> dict[tuple[str, str, str], tuple[float, str]]:
    """(table, row, column) -> (value, source); a value without a source is an error naming it."""
    tree = yaml.safe_load(path.read_text()) or {}
    published = {}
    for table, spec in tree.items():
        if table not in TABLES:
            raise ValueError(f"{path}: unknown table {table!r}; tables: {sorted(TABLES)}")
        for entry in spec.get("values", []):
            missing = {"row", "column", "value", "source"} - set(entry)
            if missing:
                raise ValueError(f"{path}: {table} entry {entry} lacks {sorted(missing)}")
            published[(table, str(entry["row"]), str(entry["column"]))] = (float(entry["value"]), entry["source"])
    return published


def build_table(name: str, ev: pd.DataFrame, published: dict) -> pd.DataFrame:
    """One row per (row, column) cell: ours (text, mean, std, n, run ids), published value and source, diff."""
    records = []
    for row, column, cell in TABLES[name](ev):
        paper = published.get((name, row, column))
        records.append({
            "row": row, "column": column, "ours": cell.text(), "mean": cell.mean, "std": cell.std,
            "runs": len(cell.values), "run_ids": " ".join(cell.run_ids), "conflict": " ".join(cell.conflict),
            "paper": paper[0] if paper else math.nan, "source": paper[1] if paper else "",
            "diff": cell.mean - paper[0] if paper and cell.values else math.nan,
        })
    return pd.DataFrame(records, columns=["row", "column", "ours", "mean", "std", "runs", "run_ids", "conflict",
                                          "paper", "source", "diff"])


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def to_markdown(name: str, table: pd.DataFrame) -> str:
    lines = [f"### {name}", "", "| row | column | ours | paper | diff | runs |", "|---|---|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['row']} | {r['column']} | {r['ours']} | {_fmt(r['paper'])} | "
                     f"{_fmt(r['diff'], signed=True)} | {r['runs']} |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&") \
        .replace("+-", r"$\pm$")


def to_latex(name: str, table: pd.DataFrame) -> str:
    lines = [r"\begin{tabular}{llrrr}", r"\toprule", r"row & column & ours & paper & diff \\", r"\midrule"]
    for _, r in table.iterrows():
        lines.append(f"{_tex(str(r['row']))} & {_tex(str(r['column']))} & {_tex(r['ours'])} & "
                     f"{_tex(_fmt(r['paper']))} & {_tex(_fmt(r['diff'], signed=True))} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", f"% {name}: generated by `mec tables` from MLflow runs"]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out_dir: Path, published_file: Path = PUBLISHED_FILE) -> dict[str, Path]:
    """Write every table as Markdown, LaTeX (booktabs) and CSV (with run ids) into ``out_dir``."""
    ev = evaluation_rows(runs)
    published = load_published(published_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    markdown = []
    for name in TABLES:
        table = build_table(name, ev, published)
        table.to_csv(out_dir / f"{name}.csv", index=False)
        (out_dir / f"{name}.tex").write_text(to_latex(name, table))
        md = to_markdown(name, table)
        (out_dir / f"{name}.md").write_text(md)
        markdown.append(md)
        written[name] = out_dir / f"{name}.md"
    (out_dir / "paper_tables.md").write_text("\n".join(markdown))
    written["all"] = out_dir / "paper_tables.md"
    return written
