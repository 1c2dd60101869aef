"""bash run.sh results: the page and the README block are renderings of docs/results.json, the claims file is
checked, and the command runs, reuses and compares on a tiny dataset."""
import json
import math

import pytest

from src.analysis import results_page as rp
from src.errors import UserError

from conftest import ROOT, output_dir


# ---- rendering, on a small hand-made results.json ----------------------------------------------------------
def row(name, oof, test=None, seeds=(0.30, 0.31, 0.32), runtime=95.0):
    """A leaderboard row as leaderboard.row writes it: seed-averaged figures, seed spread, fold spread."""
    out = {"name": name, "kind": "experiment", "command": f"bash run.sh {name[:6]}", "smoke": False,
           "precision": "bfloat16", "runtime_s": runtime, "resumes": 0, "n_folds": 5,
           "oof_score_fold_mean": oof - 0.001, "oof_score_fold_std": 0.01}
    for part, value in (("oof", oof), ("test", test)):
        for key, scale in (("acc_presence", 1.3), ("acc_salience", 0.7), ("score", 1.0)):
            v = None if value is None else round(value * scale, 4)
            mean = None if value is None else sum(seeds) / len(seeds) * scale
            std = None if value is None else math.sqrt(sum((s - sum(seeds) / len(seeds)) ** 2 for s in seeds) / len(seeds)) * scale
            out |= {f"{part}_{key}": v, f"{part}_{key}_seed_mean": mean, f"{part}_{key}_seed_std": std}
        out[f"{part}_n_seeds"] = 0 if value is None else len(seeds)
    return out


def claim(a, b, oof_a, oof_b, test=True):
    diff = [y - x for x, y in zip(oof_a, oof_b)]
    mean = sum(diff) / len(diff)
    per_seed = {"oof": {"a": oof_a, "b": oof_b, "diff_mean": mean,
                        "diff_std": math.sqrt(sum((d - mean) ** 2 for d in diff) / len(diff))}}
    if test:
        per_seed["test_vote"] = {"a": oof_a, "b": oof_b, "diff_mean": 0.0123, "diff_std": 0.0045}
    return {"claim": f"{b} beats {a}", "a": a, "b": b, "n_seeds": len(oof_a), "per_seed": per_seed,
            "seed_mean": {}, "bootstrap_oof": {"diff": -0.0091, "ci95": [-0.0226, 0.0047], "p_b_not_better": 0.887,
                                               "n_actors": 47, "n_boot": 2000},
            "arm_commands": [f"bash run.sh {a.split('@')[0]} --set train.seeds=5 --name seeds5",
                             f"bash run.sh {b.split('@')[0]} --set train.seeds=5 --name seeds5"],
            "command": f"bash run.sh compare {a} {b} --boot 2000"}


@pytest.fixture
def data():
    return {
        "schema": rp.SCHEMA,
        "generated": {"commit": "0123456789abcdef0123", "uncommitted_changes": False, "date": "2030-01-02 03:04 UTC",
                      "cpu": "cpu (AMD EPYC, AVX512, avx512_bf16, 2 cores)", "dataset": "synthetic", "smoke": False,
                      "precision": ["bfloat16"], "command": "bash run.sh results"},
        "leaderboard": [row("exp040_rank_topn", 0.3052, 0.3255), row("exp000_trivial", 0.0440, 0.0440, seeds=(0.044,))],
        "claims": {"seeds": 5, "boot": 2000, "items": [
            claim("exp043@seeds5", "exp040@seeds5", [0.30, 0.31, 0.29, 0.30, 0.32], [0.31, 0.31, 0.30, 0.30, 0.33])]},
    }


def test_block_header_names_commit_cpu_precision_seeds_and_date(data):
    head = rp.render_block(data).splitlines()[0]
    for part in ("`synthetic`", "`0123456789ab`", "2030-01-02 03:04 UTC", "AMD EPYC, AVX512, avx512_bf16",
                 "precision bfloat16", "seeds: 1, 3 per leaderboard row", "5 paired per claim arm",
                 "`bash run.sh results`"):
        assert part in head, part
    data["generated"]["uncommitted_changes"] = True
    assert "commit `0123456789ab` (with uncommitted changes);" in rp.render_block(data)


def test_block_tables_carry_the_numbers(data):
    block = rp.render_block(data)
    lines = block.splitlines()
    best = next(line for line in lines if "| exp040_rank_topn |" in line).split(" | ")
    assert best[0] == "| 1" and best[4] == "0.3052" and best[5] == "0.3100 ± 0.0082 (3)" and best[9] == "0.3255"
    assert next(line for line in lines if "| exp000_trivial |" in line).startswith("| 2 |")
    cl = next(line for line in lines if line.startswith("| exp040@seeds5 beats")).split(" | ")
    assert cl[1] == "exp040@seeds5 - exp043@seeds5"
    assert cl[2] == "+0.0060 ± 0.0049"  # per-seed differences 0.01, 0, 0.01, 0, 0.01
    assert cl[3] == "+0.0123 ± 0.0045" and cl[4] == "-0.0091 [-0.0226, +0.0047]" and cl[5] == "0.89 |"
    assert "same 5 seeds" in block and "(2000 resamples)" in block


def test_missing_figures_render_as_dashes_and_drop_the_test_columns(data):
    data["leaderboard"] = [row("exp040_rank_topn", 0.3052)]
    data["claims"]["items"] = [claim("exp043@seeds5", "exp040@seeds5", [0.3, 0.31], [0.31, 0.3], test=False)]
    block = rp.render_block(data)
    assert "test score" not in block.split("**Claims**")[0]
    assert next(line for line in block.splitlines() if "beats" in line).split(" | ")[3] == "–"
    data["claims"]["items"] = []
    assert "No claims in the claims file." in rp.render_block(data)


def test_page_holds_the_block_per_seed_tables_and_every_command(data):
    page, block = rp.render_page(data), rp.render_block(data)
    assert page.startswith("# Results\n") and block in page
    per_seed = page.split("## Per seed", 1)[1]
    assert "| exp043@seeds5 | 0.3000 | 0.3100 | 0.2900 | 0.3000 | 0.3200 | 0.3040 ± 0.0102 |" in per_seed
    for cmd in ("bash run.sh exp040", "bash run.sh exp043 --set train.seeds=5 --name seeds5",
                "bash run.sh compare exp043@seeds5 exp040@seeds5 --boot 2000", "bash run.sh results"):
        assert f"`{cmd}`" in page.split("## Commands", 1)[1], cmd
    assert rp.render_page(None).endswith(rp.PLACEHOLDER + "\n")


def test_the_block_is_replaced_between_the_markers_only(data):
    text = f"# Title\n\nbefore\n{rp.START}\nold numbers\n{rp.END}\nafter\n"
    new = rp.replace_block(text, rp.render_block(data))
    assert new.startswith("# Title\n\nbefore\n" + rp.START + "\n") and new.endswith(rp.END + "\nafter\n")
    assert "old numbers" not in new and rp.block_of(new) == rp.render_block(data)
    assert rp.replace_block(new, rp.render_block(data)) == new  # rendering twice changes nothing
    for broken in ("no markers\n", f"{rp.END}\n{rp.START}\n"):
        with pytest.raises(UserError, match="README.md: needs the markers"):
            rp.replace_block(broken, "x")


def test_nan_figures_are_stored_as_null():
    assert rp.finite({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == {"a": [1.0, None],
                                                                                         "b": {"c": None}, "d": "x"}


# ---- the committed copies -----------------------------------------------------------------------------------
def test_readme_has_the_results_markers():
    text = (ROOT / "README.md").read_text()
    assert text.count(rp.START) == 1 and text.count(rp.END) == 1
    if not (ROOT / "docs" / "results.json").exists():  # before the first regeneration: the placeholders
        assert rp.block_of(text) == rp.render_block(None)
        page = ROOT / "docs" / "results.md"
        assert not page.exists() or page.read_text() == rp.render_page(None)


def test_readme_block_and_results_page_are_renderings_of_results_json():
    if not (ROOT / "docs" / "results.json").exists():
        pytest.skip("docs/results.json absent: `bash run.sh results` has not been run on this checkout yet")
    data = rp.read_results(ROOT / "docs")
    hint = "stale copy: rerun `bash run.sh results --render-only`"
    assert rp.block_of((ROOT / "README.md").read_text()) == rp.render_block(data), hint
    assert (ROOT / "docs" / "results.md").read_text() == rp.render_page(data), hint


# ---- the claims file ----------------------------------------------------------------------------------------
def test_committed_claims_resolve_to_five_seed_variants():
    seeds, claims = rp.load_claims(rp.CLAIMS, smoke=False)
    assert seeds == 5 and len(claims) >= 10
    arms = {j for c in claims for j in (c.a, c.b)}
    assert all(j.flags[:2] == ("--set", "train.seeds=5") and j.variant.endswith("seeds5") for j in arms)
    reattend = next(j for j in arms if "reattend" in j.variant)
    assert reattend.run == "exp040@reattend-seeds5" and "model.reattend=true" in reattend.flags


@pytest.mark.parametrize("text, message", [
    ("claims: []\nseeds: 1\n", "seeds must be an integer >= 2"),
    ("seeds: 5\n", "a list under 'claims:'"),
    ("seeds: 5\nclaims:\n  - {claim: x, a: exp040}\n", r"claims\[0\]: needs claim, a and b"),
    ("seeds: 5\nclaims:\n  - {claim: x, a: exp040, b: exp043, note: y}\n", "unknown key"),
    ("seeds: 5\nclaims:\n  - {claim: x, a: exp040, b: {experiment: exp040, set: [model.reattend=true]}}\n",
     "needs a name"),
    ("seeds: 5\nclaims:\n  - {claim: x, a: exp040, b: exp999}\n", "'exp999' matches no experiment"),
    ("seeds: [5\n", "not valid YAML"),
])
def test_a_bad_claims_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        rp.load_claims(path, smoke=False)
    assert "\n" not in str(err.value) and (str(path) in str(err.value) or "exp999" in str(err.value))


def test_runs_are_invoked_as_run_sh_runs_them(monkeypatch):
    """Without --input the child gets none, so a missing default dataset is generated by the first run."""
    seen = []
    monkeypatch.setattr(rp.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or rp.subprocess.CompletedProcess(cmd, 0))
    job = rp.Job("exp040_rank_topn", ("--set", "train.seeds=5", "--name", "seeds5"), "seeds5")
    rp.invoke(job, None, quiet=True)
    rp.invoke(job, ROOT / "input" / "other", quiet=False)
    assert seen[0][1:] == ["-m", "src.main", "exp040_rank_topn", "--set", "train.seeds=5", "--name", "seeds5", "--quiet"]
    assert seen[1][3:6] == ["exp040_rank_topn", "--input", str(ROOT / "input" / "other")] and "--quiet" not in seen[1]
    monkeypatch.setattr(rp.subprocess, "run", lambda cmd, **kw: rp.subprocess.CompletedProcess(cmd, 2))
    with pytest.raises(UserError, match="exp040@seeds5: the run stopped"):
        rp.invoke(job, None, quiet=True)


# ---- the command end to end on a tiny dataset ---------------------------------------------------------------
def test_results_command_runs_reuses_and_renders(make_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the runs' child processes train in float32, as this one
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = make_dataset()
    # one worker process per run keeps the test short; the arms differ in the hidden width
    (tmp_path / "claims.yaml").write_text(
        "seeds: 5\nclaims:\n  - claim: narrow vs wide\n"
        "    a: {experiment: exp020, set: [train.workers=1], name: wide}\n"
        "    b: {experiment: exp020, set: [train.workers=1, model.hidden=32], name: narrow}\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Intro\n{rp.START}\n{rp.PLACEHOLDER}\n{rp.END}\nmore text\n")
    docs = tmp_path / "docs"
    args = ["--input", str(root), "--smoke", "--experiments", "exp000", "--claims", str(tmp_path / "claims.yaml"),
            "--seeds", "2", "--boot", "50", "--docs", str(docs), "--readme", str(readme), "--quiet"]

    rp.main(args + ["--dry-run"])
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 4 and all(": trains: no run yet" in line for line in listed[:3])
    assert listed[1] == (f"bash run.sh exp020 --input {root} --smoke --set train.seeds=2 --set train.workers=1 "
                         "--name smoke-wide-seeds2: trains: no run yet")
    assert listed[3] == "compare exp020@smoke-wide-seeds2 exp020@smoke-narrow-seeds2: narrow vs wide"
    assert not docs.exists() and not output_dir("exp000", root, "--smoke").exists()

    rp.main(args)
    data = json.loads((docs / "results.json").read_text())
    assert rp.block_of(readme.read_text()) == rp.render_block(data) and readme.read_text().endswith(f"{rp.END}\nmore text\n")
    assert (docs / "results.md").read_text() == rp.render_page(data)
    (board,) = data["leaderboard"]
    metrics = json.loads((output_dir("exp000", root, "--smoke") / "metrics.json").read_text())
    assert board["name"] == "exp000_trivial@smoke" and board["oof_score"] == metrics["oof"]["score"]
    assert board["test_score"] == metrics["test"]["score"] and board["command"] == f"bash run.sh exp000 --input {root} --smoke"
    (item,) = data["claims"]["items"]
    arms = [output_dir("exp020", root, "--smoke", "--set", "train.seeds=2", *sets, "--name", name)
            for name, sets in (("smoke-wide-seeds2", ("--set", "train.workers=1")),
                               ("smoke-narrow-seeds2", ("--set", "train.workers=1", "--set", "model.hidden=32")))]
    per_seed = [[s["oof"]["score"] for s in json.loads((a / "metrics.json").read_text())["seeds"]] for a in arms]
    assert len(per_seed[0]) == 2 and item["per_seed"]["oof"]["a"] == pytest.approx(per_seed[0], abs=1e-6)
    assert item["per_seed"]["oof"]["diff_mean"] == pytest.approx(sum(b - a for a, b in zip(*per_seed)) / 2, abs=1e-6)
    assert data["generated"]["smoke"] and data["claims"]["seeds"] == 2 and data["generated"]["precision"] == ["float32"]
    # the header's command reproduces this page: the claims file, experiments and seeds it was made with
    assert data["generated"]["command"] == (f"bash run.sh results --input {root} --smoke --claims {tmp_path / 'claims.yaml'} "
                                            "--experiments exp000 --seeds 2")

    capsys.readouterr()
    rp.main(args + ["--dry-run"])
    listed = capsys.readouterr().out.splitlines()
    assert all(line.endswith(": finished: folds reused, decoded again") for line in listed[:3]), listed
