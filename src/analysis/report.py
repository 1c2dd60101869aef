"""The paper's figures and a report.md for one experiment, regenerated from its saved outputs (no retraining).

    bash run.sh report exp042[@variant] [--input DIR]
writes exp/<id>_<slug>/output/<dataset>[@variant]/figures/*.png and report.md. A figure the experiment has nothing for
(no gates for an MLP, no projections.npz, no top-n sweep on this dataset) is skipped with a note.
"""
from __future__ import annotations

import argparse
import textwrap
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from src import data as data_mod
from src.analysis import shift
from src.analysis.cka import cka_matrix
from src.decode.metric import score
from src.errors import UserError, cli
from src.io import atomic_write, write_csv, write_text
from src.labels import BLEND_RATIOS, CONFIGS, EMOTIONS, IS_BLEND
from src.model import resolve_top_n
from src.run import config, results
from src.run.experiments import DEFAULT_INPUT, EXP_DIR, all_experiments, display_path, output_dir, resolve_run, run_name

# Each encoder's modality comes from the dataset's encoders.csv. Without it, a labelled guess from the name:
# audio or video when the name contains one of these hints, "unknown" otherwise (never a wrong default).
AUDIO_HINTS = ("hubert", "wavlm", "wav2vec", "whisper", "audio", "beats", "clap", "vggish", "panns",
               "emotion2vec", "egemaps", "opensmile", "mfcc", "speech", "voice", "encodec", "wav", "prosody")
VIDEO_HINTS = ("openface", "videomae", "video", "swin", "face", "clip", "imagebind", "dino", "vit", "resnet",
               "mae", "frame", "pose", "landmark")
GROUP_COLORS = {"video": "tab:blue", "audio": "tab:orange", "both": "tab:purple", "unknown": "tab:gray"}
COLOR_NOTE = "(blue video, orange audio, purple both, grey unknown)"

# Configurations grouped by emotion set: 6 singles (EMOTIONS order) then the 10 pairs; ratio within a pair.
SET_NAMES = list(dict.fromkeys("+".join(e for e, _ in c) for c in CONFIGS))  # 16 names
SET_OF_CONFIG = np.array([SET_NAMES.index("+".join(e for e, _ in c)) for c in CONFIGS])  # [36]
RATIO_OF_CONFIG = np.array([BLEND_RATIOS.index(tuple(s for _, s in c)) if len(c) == 2 else -1 for c in CONFIGS])
RATIO_NAMES = [f"{a}/{b}" for a, b in BLEND_RATIOS]  # salience of the pair's first-named emotion / second


class Skip(Exception):
    """A figure the experiment has no data for; the message goes into report.md."""


def guess_modality(encoder: str) -> str:
    """'audio', 'video' or 'unknown' from the encoder's name (AUDIO_HINTS, VIDEO_HINTS); audio hints first."""
    name = encoder.lower()
    if any(h in name for h in AUDIO_HINTS):
        return "audio"
    return "video" if any(h in name for h in VIDEO_HINTS) else "unknown"


def columns(frame: pd.DataFrame, prefix: str) -> np.ndarray:
    """The six `<prefix>_<e>` columns, float [N, 6] in EMOTIONS order."""
    return frame[[f"{prefix}_{e}" for e in EMOTIONS]].to_numpy(dtype=np.float64)


def train_truth(input_dir: Path) -> pd.DataFrame:
    """filename, label (configuration index), actor of every train clip, read by src.data."""
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    ds = data_mod.load_labels(root)  # the labels do not depend on the features
    return pd.DataFrame({"filename": ds.train_files, "label": ds.labels, "actor": ds.actors})


def find_outputs(exp_dir: Path, input_dir: Path, variant: str | None = None) -> Path:
    """Where an experiment (or ensemble) folder keeps its outputs for a dataset; UserError when absent."""
    out = output_dir(exp_dir, Path(input_dir).name, variant)
    if not (out / "metrics.json").is_file() or not (out / "decoded.csv").is_file():
        exp_id = Path(exp_dir).name.split("_", 1)[0]
        hint = {None: "", "smoke": " --smoke"}.get(variant, f" --name {variant}")
        raise UserError(f"{run_name(exp_dir, variant)} has no outputs for dataset '{Path(input_dir).name}' "
                        f"(no {display_path(out)}/metrics.json); "
                        f"run: bash run.sh {exp_id} --input {display_path(input_dir)}{hint}")
    return out


class Run:
    """One experiment's saved outputs for one dataset, joined by filename to the true labels and actors."""

    def __init__(self, exp_dir: Path, input_dir: Path, variant: str | None = None):
        self.exp_dir, self.input_dir, self.variant = Path(exp_dir).resolve(), Path(input_dir), variant
        self.name, self.dataset = run_name(self.exp_dir, variant), self.input_dir.name
        self.out = find_outputs(self.exp_dir, self.input_dir, variant)
        self.record = results.RunRecord.read(self.out)
        config_path = self.out / "config.resolved.yaml"
        self.config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
        oof = pd.read_csv(self.out / "oof.csv")
        truth = train_truth(self.input_dir)
        missing = sorted(set(oof["filename"]) ^ set(truth["filename"]))
        if missing:
            raise UserError(f"{display_path(self.out)}/oof.csv and {self.input_dir}/train_metadata.csv differ in "
                            f"{len(missing)} clips (e.g. {missing[0]}): outputs from another version of the dataset?")
        decoded = results.read_decoded(self.out, "oof")[["filename", "config"]].rename(columns={"config": "pred"})
        if sorted(decoded["filename"]) != sorted(oof["filename"]):
            raise UserError(f"{display_path(self.out)}: decoded.csv and oof.csv list different clips; rerun it")
        # pred: the honest OOF predictions the run scored (decoded.csv), never decoded again here
        self.oof = oof.merge(truth, on="filename", validate="one_to_one").merge(decoded, on="filename",
                                                                                validate="one_to_one")
        self.encoders = [c[len("gate_"):] for c in self.oof.columns if c.startswith("gate_")]
        self.modalities = data_mod.read_modalities(self.input_dir)
        self.modality_source = ("from encoders.csv" if self.modalities else
                                "guessed from encoder names (no encoders.csv in the dataset folder)")

    def modality(self, encoder: str) -> str:
        """The dataset's modality for the encoder, else the name guess; 'unknown' if neither says."""
        if self.modalities:
            return self.modalities.get(encoder, "unknown")
        return guess_modality(encoder)

    @property
    def gates(self) -> np.ndarray:
        """float [N, E]: each clip's weight per encoder (0 when not selected), averaged over seeds."""
        if not self.encoders:
            raise Skip("the model has no encoder gate (only fusion models write gate_<encoder> columns)")
        return self.oof[[f"gate_{e}" for e in self.encoders]].to_numpy(dtype=np.float64)

    @property
    def n_seeds(self) -> int:
        return len(self.record.seeds) or 1

    @property
    def top_n(self) -> int | None:
        """Encoders kept per clip: the sweep's best n, the config's top_n, or all encoders."""
        if self.record.group == "per_top_n":
            return int(self.record.choice_for_test)
        if "top_n" in self.config.get("derived", {}):  # the n the run used (top_n: -k resolved)
            return int(self.config["derived"]["top_n"])
        top_n = self.config.get("model", {}).get("top_n", "all")
        if top_n == "all":
            return len(self.encoders) or None
        return resolve_top_n(int(top_n), len(self.encoders)) if self.encoders else None

    def groups(self) -> dict[str, list[int]]:
        """modality -> indices into self.encoders (only groups that have an encoder)."""
        out: dict[str, list[int]] = {}
        for i, enc in enumerate(self.encoders):
            out.setdefault(self.modality(enc), []).append(i)
        return dict(sorted(out.items(), key=lambda kv: list(GROUP_COLORS).index(kv[0])))

    @cached_property
    def actor_scores(self) -> pd.DataFrame:
        """actor, fold, n, score, acc_presence, acc_salience per actor, best first."""
        rows = [{"actor": actor, "fold": int(g["fold"].iloc[0]), **score(g["pred"], g["label"])}
                for actor, g in self.oof.groupby("actor")]
        return pd.DataFrame(rows).sort_values("score", ascending=False, ignore_index=True)

    @cached_property
    def cka(self) -> tuple[list[str], np.ndarray]:
        """(encoders [E], float [E, E]): linear CKA between projected encoder embeddings, averaged over folds.

        Each fold's rows come from that fold's own model, whose projection spaces differ from the other
        folds' models, so CKA is computed within a fold and then averaged.
        """
        path = self.out / "projections.npz"
        if not path.is_file():
            raise Skip("no projections.npz (written by single fusion runs; not by MLPs, sweeps or ensembles)")
        with np.load(path) as z:
            proj, encoders, filenames = z["projections"].astype(np.float64), list(z["encoders"]), z["filenames"]
        fold_of = dict(zip(self.oof["filename"], self.oof["fold"]))
        folds = np.array([fold_of[f] for f in filenames])
        per_fold = [cka_matrix([proj[folds == k, e] for e in range(len(encoders))]) for k in np.unique(folds)]
        return [str(e) for e in encoders], np.mean(per_fold, 0)

    @cached_property
    def sweep(self) -> tuple[str, pd.DataFrame]:
        """(experiment id, its per_top_n.csv) of the first top-n sweep (model.sweep_top_n) with outputs for this
        dataset (the same variant, else the committed config)."""
        sweeps = sweep_experiments()
        if not sweeps:
            raise Skip("no experiment sweeps top_n (model.sweep_top_n: true)")
        for sweep_dir in sweeps:
            for v in dict.fromkeys([self.variant, None]):
                path = output_dir(sweep_dir, self.dataset, v) / "per_top_n.csv"
                if path.is_file():
                    return sweep_dir.name.split("_")[0], pd.read_csv(path).sort_values("top_n", ignore_index=True)
        exp_id = sweeps[0].name.split("_")[0]
        raise Skip(f"{sweeps[0].name} has no outputs for dataset '{self.dataset}' "
                   f"(run: bash run.sh {exp_id} --input {display_path(self.input_dir)})")


def sweep_experiments() -> list[Path]:
    """The experiments whose config sweeps top_n, in id order."""
    found = []
    for exp in all_experiments():
        try:
            if config.load(exp).model.sweep_top_n:
                found.append(exp)
        except UserError:  # a broken experiment folder is not a sweep
            pass
    return found


# ---- figures: each takes a Run and returns a Figure, or raises Skip ---------------------------------------

def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    return fig


def group_legend(run: Run) -> str:
    lines = [f"{g}: {', '.join(run.encoders[i] for i in idx)}" for g, idx in run.groups().items()]
    return "\n".join(textwrap.fill(s, 90) for s in lines) + f"\n(modalities {run.modality_source})"


def fig_topn(run: Run) -> Figure:
    sweep_id, table = run.sweep
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    if "oof_score_mean" in table:  # written when the sweep's seeds were scored one by one
        ax.errorbar(table["top_n"], table["oof_score_mean"], yerr=table["oof_score_std"], fmt="o-", capsize=4,
                    label="OOF, mean ± std over seeds")
    ax.plot(table["top_n"], table["oof_score"], "s--", alpha=0.8, label="OOF, seed-averaged probabilities")
    if "test_score" in table:
        ax.plot(table["top_n"], table["test_score"], "^:", alpha=0.8, label="test, seed-averaged probabilities")
    if run.top_n is not None and run.name.split("_")[0] != sweep_id:
        ax.axvline(run.top_n, color="grey", ls=":", label=f"{run.name}: n = {run.top_n}")
    ax.set_xticks(table["top_n"])
    ax.set_xlabel("n = encoders kept per clip")
    ax.set_ylabel("score = (ACC_presence + ACC_salience) / 2")
    ax.set_title(f"{sweep_id} top-n sweep on {run.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def fig_modality(run: Run) -> Figure:
    gates, groups = run.gates, run.groups()
    share = {g: gates[:, idx].sum(1) for g, idx in groups.items()}  # per clip, sums to 1 over groups
    fig = new_figure(11, 5)
    left, right = fig.subplots(1, 2, width_ratios=[1, 2])
    box = left.boxplot(list(share.values()), tick_labels=list(share), patch_artist=True, showmeans=True,
                       medianprops={"color": "k"}, flierprops={"markersize": 2, "alpha": 0.3})
    for patch, g in zip(box["boxes"], share):
        patch.set_facecolor(GROUP_COLORS[g])
        patch.set_alpha(0.6)
    for x, (g, idx) in enumerate(groups.items(), start=1):
        left.hlines(len(idx) / len(run.encoders), x - 0.4, x + 0.4, colors="k", linestyles=":")
    left.set_ylabel("summed gate weight per clip")
    left.set_title("per clip (dotted: uniform weights)", fontsize=9)
    # mean share per true emotion set: does the gate lean on audio for the emotions audio hears best?
    labels = run.oof["label"].to_numpy()
    kind = np.where(IS_BLEND[labels], "blend", np.array(SET_NAMES)[SET_OF_CONFIG[labels]])
    order = list(EMOTIONS) + ["blend"]
    bottom = np.zeros(len(order))
    for g, values in share.items():
        means = np.array([values[kind == k].mean() if (kind == k).any() else 0.0 for k in order])
        right.bar(order, means, bottom=bottom, color=GROUP_COLORS[g], alpha=0.7, label=g)
        bottom += means
    right.set_ylabel("mean summed gate weight")
    right.set_xlabel("true label of the clip")
    right.set_title("by true label", fontsize=9)
    right.legend()
    fig.suptitle(f"{run.name}: importance by modality group (OOF clips)\n{group_legend(run)}", fontsize=9)
    return fig


def selection_frequency(run: Run) -> tuple[np.ndarray, np.ndarray, str]:
    """(mean [E], std [E], label): fraction of OOF clips whose gate keeps each encoder, per seed then averaged.

    Reads each seed's fold files (runs/<fingerprint>/folds/<sub-run>/fold*_seed*.npz); without them, the
    seed-averaged gates of oof.csv, which count an encoder kept by any seed (labelled as such).
    """
    fp = run.config.get("run", {}).get("fingerprint", "")
    folder = run.out / "runs" / fp / "folds" / (run.record.choice_for_test if run.record.group == "per_top_n" else "")
    per_seed: dict[str, list] = {}
    for path in sorted(folder.glob("fold*_seed*.npz")) if fp else []:
        valid, _, _ = results.read_fold(path)
        if "gate" in valid:
            per_seed.setdefault(path.stem.split("_seed")[1], []).append(valid["gate"] > 0)
    counts = {len(np.concatenate(v)) for v in per_seed.values()}
    if per_seed and counts == {len(run.oof)}:
        freq = np.array([np.concatenate(v).mean(0) for v in per_seed.values()])  # [S, E]
        return freq.mean(0), freq.std(0), f"per seed, mean ± std over {len(freq)} seed(s)"
    label = "selected by at least one seed: no per-seed fold files" if run.n_seeds > 1 else "one seed"
    return (run.gates > 0).mean(0), np.zeros(len(run.encoders)), label


def fig_selection(run: Run) -> Figure:
    run.gates  # Skip when the model has no gate
    selected, spread, how = selection_frequency(run)
    order = np.argsort(-selected, kind="stable")
    fig = new_figure(max(6, 0.8 * len(order) + 2), 4.5)
    ax = fig.subplots()
    ax.bar([run.encoders[i] for i in order], selected[order], yerr=spread[order], capsize=3,
           color=[GROUP_COLORS[run.modality(run.encoders[i])] for i in order])
    if run.top_n:
        ax.axhline(run.top_n / len(run.encoders), color="k", ls=":", label=f"n/E = {run.top_n}/{len(run.encoders)} "
                   "(every encoder equally often)")
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of OOF clips with gate > 0")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(f"{run.name}: how often each encoder is in the top-n ({how})\n{COLOR_NOTE}", fontsize=9)
    return fig


def fig_fold_heatmap(run: Run) -> Figure:
    gates, folds = run.gates, run.oof["fold"].to_numpy()
    fold_ids = np.unique(folds)
    mean = np.array([gates[folds == k].mean(0) for k in fold_ids])  # [K, E]
    fig = new_figure(max(6, 0.9 * len(run.encoders) + 2), 0.5 * len(fold_ids) + 2.5)
    ax = fig.subplots()
    image = ax.imshow(mean, cmap="viridis", aspect="auto")
    scaled = (mean - mean.min()) / max(mean.max() - mean.min(), 1e-12)  # position on the colour scale
    for (k, e), v in np.ndenumerate(mean):
        ax.text(e, k, f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="white" if scaled[k, e] < 0.5 else "black")
    ax.set_xticks(range(len(run.encoders)), run.encoders, rotation=30, ha="right")
    ax.set_yticks(range(len(fold_ids)), [f"fold {k}" for k in fold_ids])
    fig.colorbar(image, ax=ax, label="mean gate weight")
    ax.set_title(f"{run.name}: mean encoder importance per fold (validation clips of each fold)", fontsize=9)
    return fig


def fig_gate_distribution(run: Run) -> Figure:
    gates = run.gates
    order = np.argsort(-gates.mean(0), kind="stable")
    fig = new_figure(max(6, 0.8 * len(order) + 2), 4.5)
    ax = fig.subplots()
    box = ax.boxplot([gates[:, i] for i in order], tick_labels=[run.encoders[i] for i in order], patch_artist=True,
                     showmeans=True, medianprops={"color": "k"}, flierprops={"markersize": 2, "alpha": 0.3})
    for patch, i in zip(box["boxes"], order):
        patch.set_facecolor(GROUP_COLORS[run.modality(run.encoders[i])])
        patch.set_alpha(0.6)
    ax.set_ylabel("gate weight per clip (0 = not selected)")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(f"{run.name}: distribution of importance weights per encoder (triangle: mean)\n"
                 f"{COLOR_NOTE}", fontsize=9)
    return fig


def fig_cka(run: Run) -> Figure:
    encoders, matrix = run.cka
    group_rank = list(GROUP_COLORS).index
    order = sorted(range(len(encoders)), key=lambda i: (group_rank(run.modality(encoders[i])), encoders[i]))
    matrix = matrix[np.ix_(order, order)]
    names = [encoders[i] for i in order]
    fig = new_figure(0.8 * len(names) + 3, 0.7 * len(names) + 2)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_title(f"{run.name}: linear CKA between projected encoder embeddings\n"
                 "(OOF clips that have both encoders, seed 0, within each fold then averaged; "
                 "video, audio, both, unknown)", fontsize=9)
    return fig


def confusion_counts(run: Run):
    """(emotion-set confusion int [16, 16] true x predicted, ratio confusion int [3, 3] for blends whose pair
    was predicted right)."""
    true, pred = run.oof["label"].to_numpy(), run.oof["pred"].to_numpy()
    sets = np.zeros((len(SET_NAMES), len(SET_NAMES)), dtype=int)
    np.add.at(sets, (SET_OF_CONFIG[true], SET_OF_CONFIG[pred]), 1)
    pair_right = (RATIO_OF_CONFIG[true] >= 0) & (SET_OF_CONFIG[true] == SET_OF_CONFIG[pred])
    ratios = np.zeros((len(BLEND_RATIOS), len(BLEND_RATIOS)), dtype=int)
    np.add.at(ratios, (RATIO_OF_CONFIG[true][pair_right], RATIO_OF_CONFIG[pred][pair_right]), 1)
    return sets, ratios


def fig_confusion(run: Run) -> Figure:
    sets, ratios = confusion_counts(run)
    fig = new_figure(12, 7)
    left, right = fig.subplots(1, 2, width_ratios=[2.6, 1])
    rate = sets / np.clip(sets.sum(1, keepdims=True), 1, None)
    left.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    for (i, j), c in np.ndenumerate(sets):
        if c:
            left.text(j, i, f"{100 * rate[i, j]:.0f}", ha="center", va="center", fontsize=6.5,
                      color="white" if rate[i, j] > 0.5 else "black")
    left.set_xticks(range(len(SET_NAMES)), SET_NAMES, rotation=60, ha="right", fontsize=8)
    left.set_yticks(range(len(SET_NAMES)), SET_NAMES, fontsize=8)
    left.axhline(len(EMOTIONS) - 0.5, color="grey", lw=0.8)
    left.axvline(len(EMOTIONS) - 0.5, color="grey", lw=0.8)
    left.set_xlabel("predicted emotion set")
    left.set_ylabel("true emotion set")
    left.set_title("emotion sets (percent of each true row; singles, then pairs)", fontsize=9)
    ratio_rate = ratios / np.clip(ratios.sum(1, keepdims=True), 1, None)
    right.imshow(ratio_rate, cmap="Greens", vmin=0, vmax=1)
    for (i, j), c in np.ndenumerate(ratios):
        right.text(j, i, f"{c}\n({ratio_rate[i, j]:.0%})", ha="center", va="center", fontsize=8,
                   color="white" if ratio_rate[i, j] > 0.5 else "black")
    right.set_xticks(range(len(RATIO_NAMES)), RATIO_NAMES)
    right.set_yticks(range(len(RATIO_NAMES)), RATIO_NAMES)
    right.set_xlabel("predicted ratio")
    right.set_ylabel("true ratio (first-named emotion / second)")
    total = ratios.sum()
    right.set_title(f"ratio, for the {total} blends whose pair was right\n"
                    f"ratio right: {np.trace(ratios) / max(total, 1):.0%}", fontsize=9)
    fig.suptitle(f"{run.name}: OOF confusion (honest decoding)", fontsize=10)
    return fig


def fig_actor(run: Run) -> Figure:
    table = run.actor_scores
    fig = new_figure(max(7, 0.25 * len(table) + 2), 4.5)
    ax = fig.subplots()
    colors = [f"C{k % 10}" for k in table["fold"]]
    ax.bar(table["actor"], table["score"], color=colors)
    line = ax.axhline(run.record.oof["score"], color="k", ls="--",
                      label=f"all clips {run.record.oof['score']:.3f}")
    folds = [Patch(color=f"C{k % 10}", label=f"fold {k}") for k in sorted(table["fold"].unique())]
    ax.set_ylabel("OOF score of the actor's clips")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.legend(handles=[line, *folds], fontsize=7, ncol=2)
    ax.set_title(f"{run.name}: score per actor (each actor unseen by the model that predicts it)", fontsize=9)
    return fig


def fig_loss(run: Run) -> Figure:
    histories = run.record.history
    if not any(histories.values()):
        raise Skip("no per-epoch losses in metrics.json (a prior, an ensemble, or a run from before they were saved)")
    sub = run.record.choice_for_test or next(k for k, v in histories.items() if v)
    per_fold = {key: h for key, h in histories[sub].items() if key.endswith("_seed0")}
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    for i, (key, h) in enumerate(sorted(per_fold.items())):
        fold = key.split("_")[0].removeprefix("fold")
        epochs = np.arange(1, len(h["train_loss"]) + 1)
        ax.plot(epochs, h["train_loss"], "-", color=f"C{i % 10}", label=f"fold {fold} train")
        if h.get("inner_loss"):
            ax.plot(epochs[:len(h["inner_loss"])], h["inner_loss"], "--", color=f"C{i % 10}",
                    label=f"fold {fold} inner split")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (training objective; inner split: task loss)")
    ax.set_title(f"{run.name}: training loss per fold, seed 0" + (f" (sub-run {sub})" if sub != "model" else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


# name, title, what it shows, function
FIGURES = (
    ("topn_curve", "Score against the number of selected encoders n",
     "OOF score of the top-n sweep (an experiment with model.sweep_top_n) for each n: mean ± std over seeds (error bars), the score of the "
     "seed-averaged probabilities, and the test score when the dataset has test labels.", fig_topn),
    ("modality_importance", "Importance by modality group",
     "Per clip, the gate weight summed over the video encoders and over the audio encoders (left), and its mean "
     "by the clip's true label (right).", fig_modality),
    ("selection_frequency", "How often each encoder is selected",
     "Fraction of OOF clips whose gate for the encoder is above zero, i.e. the encoder is in the clip's top-n.",
     fig_selection),
    ("fold_importance", "Mean encoder importance per fold",
     "Mean gate weight of each encoder over each fold's validation clips (each predicted by that fold's models).",
     fig_fold_heatmap),
    ("gate_distribution", "Distribution of importance weights",
     "Box plot of the per-clip gate weight of each encoder, zeros (not selected) included.", fig_gate_distribution),
    ("cka", "Linear CKA between projected encoder embeddings",
     "Pairwise linear CKA of the encoders' 256-d projections (shared space, before the gate), OOF clips of seed 0.",
     fig_cka),
    ("confusion", "Confusion over label configurations",
     "Emotion sets (6 singles + 10 pairs, rows normalised), and the ratio confusion of the blends whose pair was "
     "right.", fig_confusion),
    ("actor_scores", "Score per actor",
     "OOF score of each actor's clips (sorted), coloured by fold; unseen actors are the known bottleneck.", fig_actor),
    ("loss_curves", "Training loss per fold",
     "Mean training loss per epoch of each fold's model (seed 0); dashed: the loss on the inner split of the "
     "training folds that early stopping watches, when it is on.", fig_loss),
)


def save_figure(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))


# ---- findings and report.md ---------------------------------------------------------------------------

def fmt_pm(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.4f} ± {values.std():.4f}" if len(values) else "n/a"


def score_findings(run: Run) -> list[str]:
    m = run.record
    folds = [f["score"] for f in m.folds]
    seeds = [s["oof"]["score"] for s in m.seeds]
    honest = ""
    if m.oof_thresholds_in_sample and m.decoder["name"] == "threshold":
        honest = (f" with thresholds refitted per fold on the other folds ({m.oof_thresholds_in_sample['score']:.4f}"
                  " if fitted on all OOF rows, which is optimistic)")
    return [f"OOF score {m.oof['score']:.4f}{honest}; over folds {fmt_pm(folds)} (worst {min(folds):.4f}, "
            f"best {max(folds):.4f})" + (f"; over {len(seeds)} seeds {fmt_pm(seeds)}" if len(seeds) > 1 else "") + "."]


def gate_findings(run: Run) -> list[str]:
    gates, folds = run.gates, run.oof["fold"].to_numpy()
    mean, selected = gates.mean(0), selection_frequency(run)[0]
    hi, lo = int(np.argmax(mean)), int(np.argmin(mean))
    shares = [f"{g} {gates[:, idx].sum(1).mean():.0%} of the gate weight from {len(idx)} of "
              f"{len(run.encoders)} encoders" for g, idx in run.groups().items()]
    top = [run.encoders[int(np.argmax(gates[folds == k].mean(0)))] for k in np.unique(folds)]
    agree = max(top.count(e) for e in top)
    return [f"Most used encoder: {run.encoders[hi]} (mean gate {mean[hi]:.3f}, in the top-n of {selected[hi]:.0%} "
            f"of clips); least used: {run.encoders[lo]} ({mean[lo]:.3f}, {selected[lo]:.0%}).",
            "By modality: " + "; ".join(shares) + ".",
            f"Top encoder per fold: {', '.join(top)} ({agree} of {len(top)} folds agree)."]


def cka_findings(run: Run) -> list[str]:
    names, matrix = run.cka
    pairs = [(matrix[i, j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    if not pairs:
        return []
    hi, lo = max(pairs), min(pairs)
    return [f"Most similar projections: {hi[1]} and {hi[2]} (CKA {hi[0]:.2f}); least similar: {lo[1]} and {lo[2]} "
            f"({lo[0]:.2f})."]


def decoded_findings(run: Run) -> list[str]:
    actors, (sets, ratios) = run.actor_scores, confusion_counts(run)
    out = [f"Per-actor OOF score ranges from {actors['score'].iloc[-1]:.3f} ({actors['actor'].iloc[-1]}) to "
           f"{actors['score'].iloc[0]:.3f} ({actors['actor'].iloc[0]}), std {actors['score'].std(ddof=0):.3f} over "
           f"{len(actors)} actors."]
    off = sets - np.diag(np.diag(sets))
    i, j = np.unravel_index(int(np.argmax(off)), off.shape)
    if off[i, j]:
        out.append(f"Most frequent emotion-set error: true {SET_NAMES[i]} predicted as {SET_NAMES[j]} "
                   f"({off[i, j]} of {sets[i].sum()} clips).")
    if ratios.sum():
        out.append(f"Of the {ratios.sum()} blends whose pair was right, {np.trace(ratios) / ratios.sum():.0%} also "
                   "got the ratio right.")
    return out


def sweep_findings(run: Run) -> list[str]:
    sweep_id, sweep = run.sweep
    best = sweep.loc[sweep["oof_score"].idxmax()]
    return [f"In the {sweep_id} sweep the best OOF score is at n = {int(best['top_n'])} "
            f"({best['oof_score']:.4f}) of {int(sweep['top_n'].max())}."]


def findings(run: Run) -> list[str]:
    """A few sentences read off the numbers behind the figures; parts without data are left out."""
    out = []
    for part in (score_findings, gate_findings, cka_findings, decoded_findings, sweep_findings):
        try:
            out += part(run)
        except Skip:
            pass
    return out


def metrics_table(m: results.RunRecord) -> str:
    head = "| rows | n | n_blend | ACC_presence | ACC_salience | score |\n|---|---|---|---|---|---|\n"
    row = lambda name, r: (f"| {name} | {r['n']} | {r['n_blend']} | {r['acc_presence']:.4f} | "
                           f"{r['acc_salience']:.4f} | {r['score']:.4f} |\n")
    nested = " and sub-run chosen per fold on the other folds" if m.chosen_per_fold else ""
    text = head + row(f"**OOF** (thresholds refitted per fold{nested})", m.oof)
    if m.oof_thresholds_in_sample:
        text += row("OOF, thresholds fitted in-sample", m.oof_thresholds_in_sample)
    if m.oof_choice_in_sample:
        text += row(f"OOF of {m.choice_for_test} alone, chosen in-sample (optimistic)", m.oof_choice_in_sample)
    text += "".join(row(f"fold {f['fold']}", f) for f in m.folds)
    if m.test:
        text += row("**test**", m.test)
    seeds = m.seeds
    if len(seeds) > 1:
        text += f"\nOver {len(seeds)} seeds (each seed decoded on its own): OOF score " \
                f"{fmt_pm([s['oof']['score'] for s in seeds])}"
        if all("test" in s for s in seeds):
            text += f", test score {fmt_pm([s['test']['score'] for s in seeds])}"
        text += " (mean ± std).\n"
    return text


DECODER_KEYS = ("name", "alpha", "beta", "head_weight", "blend_share")  # those a reader needs; others omitted


def decoder_text(d: dict) -> str:
    if d["name"] == "nearest":
        return "`nearest`: each probability vector gets the configuration with the closest salience vector.\n"
    fitted = ", ".join(f"{k} {d[k]}" for k in DECODER_KEYS if k in d)
    text = f"Fitted on all OOF rows (used for test): {fitted}.\n"
    per_fold = d.get("per_fold", [])
    keys = ["fold"] + [k for k in DECODER_KEYS if any(k in p for p in per_fold)]
    if per_fold:
        text += ("\nThe OOF score uses per-fold refits on the other folds:\n\n| " + " | ".join(keys) + " |\n|"
                 + "---|" * len(keys) + "\n" + "".join("| " + " | ".join(str(p.get(k, "")) for k in keys) + " |\n"
                                                     for p in per_fold))
    return text


def shift_section(run: Run) -> str:
    """The train/test shift of the run's encoders (src/analysis/shift.py), as report.md text; shift.csv beside it."""
    try:
        ds = data_mod.load(run.input_dir, run.encoders or "all", allow_missing=True)
        table, actors = shift.report(ds, shift.test_actors_of(ds))
    except UserError as why:
        return f"_Skipped: {why}._\n"
    write_csv(run.out / "shift.csv", table)
    moved = [r.encoder for r in table.itertuples() if r.shifted]
    verdict = (f"Moved by the test set: {', '.join(moved)}." if moved
               else "No encoder moved beyond what new actors explain.")
    return ("Adversarial validation per encoder: a classifier tells training clips from test clips by that "
            "encoder's features (AUC 0.5: no shift); `null` is the same with training actors posing as the test "
            f"set, and an encoder counts as moved when its AUC exceeds that by {shift.FLAG_MARGIN}. {verdict}\n\n"
            f"```\n{shift.show(table, actors)}\n```\n")


def write_report(exp_dir: Path, input_dir: Path, variant: str | None = None) -> Path:
    """Figures under output/<dataset>[@variant]/figures/ and report.md next to them; returns the report's path."""
    run = Run(exp_dir, input_dir, variant)
    sections = []
    for number, (name, title, caption, draw) in enumerate(FIGURES, start=1):
        try:
            save_figure(draw(run), run.out / "figures" / f"{name}.png")
            body = f"{caption}\n\n![{title}](figures/{name}.png)"
        except Skip as why:
            (run.out / "figures" / f"{name}.png").unlink(missing_ok=True)  # no stale figure from an older run
            body = f"{caption}\n\n_Skipped: {why}._"
        sections.append(f"### {number}. {title}\n\n{body}\n")
    m = run.record
    smoke = "\n**Smoke run** (tiny training budget): the numbers only show that the pipeline works.\n" \
        if m.smoke else ""
    groups = "; ".join(f"{g}: {', '.join(run.encoders[i] for i in idx)}" for g, idx in run.groups().items())
    is_experiment = run.exp_dir.parent == EXP_DIR and run.name.startswith("exp")
    spec = run.name.split("_")[0] + (f"@{variant}" if variant else "") if is_experiment else display_path(run.exp_dir)
    command = f"bash run.sh report {spec} --input {display_path(run.input_dir)}"
    text = (f"# {run.name} on {run.dataset}\n\n"
            f"Generated by `{command}` from the saved outputs in `{display_path(run.out)}` (no retraining). "
            f"Run time {m.runtime_s} s"
            + (f" over {m.invocations} invocations" if m.resumes else "") + f".\n{smoke}\n"
            f"## Scores\n\n{metrics_table(m)}\n## Decoder\n\n{decoder_text(m.decoder)}\n"
            "## Findings\n\n" + "".join(f"- {s}\n" for s in findings(run))
            + f"\n## Train/test shift\n\n{shift_section(run)}"
            + "\n## Figures\n\n"
            + (f"Modality groups {run.modality_source}: {groups}.\n\n" if run.encoders else "")
            + "\n".join(sections))
    return write_text(run.out / "report.md", text)


def resolve_folder(name: str) -> tuple[Path, str | None]:
    """An experiment id ('exp042', 'exp042@smoke'), or an ensemble folder such as exp/ensembles/NAME."""
    path = Path(name)
    for candidate in (path, EXP_DIR.parent / path):
        if candidate.parent.name == "ensembles" and candidate.parent.parent == EXP_DIR:
            return candidate.resolve(), None
    return resolve_run(name)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="Figures and report.md of an experiment, from its saved outputs.")
    p.add_argument("experiment", help="experiment id (exp042, exp042@smoke) or an ensemble (exp/ensembles/NAME)")
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="dataset folder (default: input/synthetic)")
    args = p.parse_args(argv)
    folder, variant = resolve_folder(args.experiment)
    path = write_report(folder, args.input, variant)
    figures = sorted((path.parent / "figures").glob("*.png"))  # skipped figures were removed
    print(f"wrote {display_path(path)}" + (f" and {len(figures)} figures in {display_path(path.parent / 'figures')}/"
                                          if figures else " (every figure skipped: these outputs have no data for them)"))


if __name__ == "__main__":
    main()
