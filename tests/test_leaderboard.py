"""atomfm leaderboard: collection and validation of result files, ranks, the Markdown and the site's files."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from leaderboard_results import DATA, metric, model, write_results

from data_pipeline.schema import BadInputError
from eval.leaderboard import build_report
from eval.leaderboard.collect import collect_results
from eval.leaderboard.plots import table_position
from eval.leaderboard.rank import competition_ranks, rank_results
from eval.leaderboard.tables import board_tables
from eval.metrics import ratio_metric
from eval.results import result_record, write_result
from launch import cli

ACCURACY = ("accuracy", "water/test")


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return write_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def report(results_dir, tmp_path_factory) -> Path:
    return build_report([str(results_dir)], str(tmp_path_factory.mktemp("report")))


def copy_of(results_dir: Path, folder: Path, pattern: str = "*.json") -> Path:
    folder.mkdir()
    for path in results_dir.glob(pattern):
        (folder / path.name).write_text(path.read_text())
    return folder


def test_equal_values_share_the_best_place_and_missing_ones_have_none():
    scores = {"a": 1.0, "b": 1.0, "c": 2.0, "d": None}
    assert competition_ranks(scores) == {"a": 1, "b": 1, "c": 3, "d": None}
    assert competition_ranks(scores, better="higher") == {"a": 2, "b": 2, "c": 1, "d": None}


def test_ranks_follow_better_per_board_and_a_missing_board_counts_below_the_last(results_dir):
    ranking = rank_results(collect_results([results_dir]))
    assert ranking.domain[(ACCURACY, "all")] == {"large": 1, "small": 2, "reference+zero-force": 3}
    assert ranking.board[("eos", "water/test")] == {"small": 1, "large": 2}  # no "all": mean domain rank
    assert ranking.board[("conformer_ranking", "water/test")] == {"small": 1, "large": 2}  # higher is better
    # small (2 + 1 + 1) / 3, large (1 + 2 + 2) / 3, baseline (3 + 3 + 3) / 3: unscored boards count as 3rd
    assert ranking.mean_rank == pytest.approx({"small": 4 / 3, "large": 5 / 3, "reference+zero-force": 3.0})
    assert ranking.models == ["small", "large", "reference+zero-force"]
    assert ranking.boards_ranked == {"small": 3, "large": 3, "reference+zero-force": 1}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text[: len(text) // 2], "not readable JSON"),
        (lambda text: text.replace('"schema_version": 1', '"schema_version": 2'), "schema version 2"),
        (
            lambda text: text.replace('"better": "lower"', '"better": "sideways"', 1),
            r"field 'metrics\.\w+\.\w+\.better'",
        ),
        (lambda text: text.replace('"kind": "checkpoint"', '"kind": "oracle"'), "field 'model.kind'"),
    ],
)
def test_a_bad_result_file_is_an_error_naming_it(results_dir, tmp_path, damage, message):
    folder = copy_of(results_dir, tmp_path / "results")
    bad = folder / "small__accuracy__water-test.json"
    bad.write_text(damage(bad.read_text()))
    with pytest.raises(BadInputError, match=message) as err:
        collect_results([folder])
    assert str(bad) in str(err.value)


def test_other_json_is_skipped_with_a_warning_and_no_results_at_all_is_an_error(tmp_path, caplog):
    (tmp_path / "model_config.json").write_text(json.dumps({"backbone": {}}))
    with caplog.at_level(logging.WARNING), pytest.raises(BadInputError, match="no atomfm-eval-result files"):
        collect_results([tmp_path])
    assert "skipping" in caplog.text and "model_config.json" in caplog.text


def test_two_results_for_one_model_task_and_data_are_an_error(results_dir, tmp_path):
    again = copy_of(results_dir, tmp_path / "again")
    with pytest.raises(BadInputError, match="a second result for model"):
        collect_results([results_dir, again])


def test_markdown_has_a_ranked_table_per_board_and_domain_with_intervals_and_counts(report):
    text = (report.parent / "report.md").read_text()
    headings = re.findall(r"^#+ .*$", text, flags=re.MULTILINE)
    assert headings[:3] == ["# atomfm leaderboard", "## Overall", "## accuracy · water/test"]
    assert {"### all domains", "### molecule", "### material"} <= set(headings)
    row = next(line for line in text.splitlines() if line.startswith("| 1 | [large]"))  # best on accuracy/all
    assert re.search(r"\| 30\.0 \[\d+\.\d, \d+\.\d\] n=10 \|", row), row


def test_csv_of_a_table_has_raw_values_intervals_and_counts(results_dir):
    results = collect_results([results_dir])
    table = board_tables(results, rank_results(results), {})[ACCURACY][0]
    rows = list(csv.DictReader(io.StringIO(table.csv_text())))
    assert [r["model"] for r in rows] == ["large", "small", "reference+zero-force"]
    low, value, high = (
        float(rows[0][k]) for k in ("force_mae ci95 low", "force_mae (meV/Å)", "force_mae ci95 high")
    )
    assert low < value < high and value == pytest.approx(30.0)
    assert rows[0]["force_mae n"] == "10" and rows[0]["force_mae n_items"] == "30"


def test_pages_reference_only_their_own_png_files(report):
    pages = sorted(report.parent.glob("*.html"))
    assert {p.name for p in pages} == {
        "index.html",
        "model-large.html",
        "model-small.html",
        "model-reference+zero-force.html",
    }
    for page in pages:
        html = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", html), (
            f"{page.name} loads something from the network"
        )
        for src in re.findall(r'<img src="([^"]+)"', html):
            assert (report.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{page.name}: {src}"
    large = (report.parent / "model-large.html").read_text()
    assert {
        "parity-accuracy-water_test-molecule.png",
        "elements-accuracy-water_test-material.png",
        "learning-curve.png",
    } <= {Path(src).name for src in re.findall(r'<img src="([^"]+)"', large)}


def test_periodic_table_positions():
    places = {z: table_position(z) for z in range(1, 119)}
    assert places[1] == (0, 0) and places[2] == (0, 17) and places[5] == (1, 12) and places[19] == (3, 0)
    assert places[57] == (8, 2) and places[71] == (8, 16) and places[72] == (5, 3) and places[86] == (5, 17)
    assert places[89] == (9, 2) and places[118] == (6, 17)
    assert len(set(places.values())) == 118


def test_command_reports_bad_input_in_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atomfm leaderboard: ") and err.count("\n") == 1 and "Traceback" not in err


def test_command_writes_the_report_and_says_where(results_dir, tmp_path, capsys):
    eos = copy_of(results_dir, tmp_path / "eos", "*__eos__*.json")  # no plots but one: quick
    assert cli.main(["leaderboard", str(eos), "--out", str(tmp_path / "report")]) == 0
    assert str(tmp_path / "report" / "index.html") in capsys.readouterr().out
    assert (tmp_path / "report" / "report.md").is_file()


def test_generation_results_get_their_own_board_with_the_sample_count_on_every_cell(tmp_path):
    """`atomfm generate --score` results (a sampler and the training-molecule ceiling) land on one
    "generation · data" board, ranked on molecule stability, every cell carrying the molecules it rests on
    (the xTB subset's own, smaller n)."""
    data = {
        "name": "demo/train",
        "kind": "corpus",
        "structures": 50,
        "atoms": 900,
        "domains": {"molecule": 50},
    }
    folder = tmp_path / "generation"
    for who, stability in (
        (model("diffusion-ft", "checkpoint"), 40.0),
        (model("training", "baseline"), 99.0),
        (model("edm", "samples"), 60.0),  # another code's molecules, scored by `atomfm generate --samples`
    ):
        metrics = {
            "molecule_stability": metric(stability, "%", "higher", n=20),
            "validity": metric(stability + 5, "%", "higher", n=20),
            "xtb_rmsd": metric(0.3, "Å", "lower", n=4),
        }
        body = {"metrics": {"molecule": metrics}, "details": {"molecules": 20}}
        write_result(
            folder, result_record("generation", "molecule_stability", who, data, body, wall_time_s=1.0)
        )
    results = collect_results([folder])
    ranking = rank_results(results)
    assert ranking.board[("generation", "demo/train")] == {"training": 1, "edm": 2, "diffusion-ft": 3}
    text = build_report([str(folder)], str(tmp_path / "report")).parent.joinpath("report.md").read_text()
    section = text.split("## generation · demo/train", 1)[1]
    assert "Ranked on molecule_stability." in section
    rows = [line for line in section.splitlines() if re.match(r"\| [123] \|", line)]
    assert len(rows) == 3
    for row in rows:
        cells = row.split(" | ")[3:]
        assert [re.search(r"n=(\d+)", c).group(1) for c in cells] == ["20", "20", "4"], row


def test_pretrained_and_scratch_arms_of_equal_budgets_are_paired_with_their_gain_and_learning_curve(tmp_path):
    def trained(init_from, structures, steps=80):
        return {
            "init_from": init_from, "max_steps": steps, "seed": 1, "split": "train", "lr": 5e-4,
            "domain_weights": {"molecule": 1.0}, "max_atoms": 256, "conservative_forces": True,
            "tasks": ["energy", "forces"], "corpus": [f"data/n{structures}"], "train_structures": structures,
        }

    folder = tmp_path / "results"
    arms = {"pretrained": ("runs/demo/direct", {50: 200, 200: 120, 1000: 60}), "scratch": (None, {50: 400, 200: 150, 1000: 61})}
    for arm, (init_from, errors) in arms.items():
        for n, force in errors.items():
            who = {**model(f"{arm}-n{n}", "checkpoint"), "training": trained(init_from, n)}
            body = {"metrics": {"molecule": {"force_mae": metric(force)}}, "details": {}}
            write_result(folder, result_record("accuracy", "force_mae", who, DATA, body, wall_time_s=1.0))
    odd = {**model("other-budget", "checkpoint"), "training": trained(None, 50, steps=40)}  # pairs with nothing
    body = {"metrics": {"molecule": {"force_mae": metric(300.0)}}, "details": {}}
    write_result(folder, result_record("accuracy", "force_mae", odd, DATA, body, wall_time_s=1.0))

    out = tmp_path / "report"
    build_report([str(folder)], str(out))
    markdown = (out / "report.md").read_text()
    section = markdown.split("## Pretrained versus from scratch")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| molecule")]
    assert len(rows) == 3 and "other-budget" not in section
    by_size = {row.split(" | ")[8]: row for row in rows}
    assert "+50%" in by_size["50"] and "apart" in by_size["50"]  # 200 vs 400
    assert "+2%" in by_size["1,000"] and "overlap" in by_size["1,000"]  # 60 vs 61
    curve = out / "plots" / "pretraining-accuracy-water_test-molecule.png"
    assert curve.is_file() and f"]({curve.relative_to(out).as_posix()})" in section
    assert "Pretrained versus from scratch" in (out / "index.html").read_text()


def test_the_gain_gets_a_paired_interval_over_the_structures_both_arms_were_scored_on(tmp_path):
    """Structures of very different difficulty make both arms' own intervals wide and overlapping; the
    pretrained arm is 10% better on every one of them, which the paired interval shows."""
    training = {
        "max_steps": 80,
        "seed": 1,
        "split": "train",
        "lr": 5e-4,
        "domain_weights": {"molecule": 1.0},
        "max_atoms": 256,
        "conservative_forces": True,
        "tasks": ["energy", "forces"],
        "corpus": ["data/demo"],
        "train_structures": 100,
    }
    rng = np.random.default_rng(0)
    difficulty = rng.lognormal(0.0, 1.0, size=40)  # eV/Å per component, summed over 30 components each
    keys = [f"molecules/{i}" for i in range(40)]
    folder = tmp_path / "results"
    for name, init_from, factor, order in (("pre", "runs/demo/direct", 0.9, 1), ("scratch", None, 1.0, -1)):
        sums = 30 * difficulty * factor
        counts = np.full(40, 30.0)
        per_structure = {
            "force_abs": {"keys": keys[::order], "sums": sums[::order].tolist(), "counts": counts.tolist()}
        }
        own = ratio_metric(sums, counts, unit="meV/Å", scale=1000.0).to_dict()
        body = {
            "metrics": {"molecule": {"force_mae": own}},
            "per_structure": {"molecule": per_structure},
            "details": {},
        }
        who = {**model(name, "checkpoint"), "training": {**training, "init_from": init_from}}
        write_result(folder, result_record("accuracy", "force_mae", who, DATA, body, wall_time_s=1.0))
    out = tmp_path / "report"
    build_report([str(folder)], str(out))
    section = (out / "report.md").read_text().split("## Pretrained versus from scratch")[1].split("\n## ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| molecule")]
    cells = row.split(" | ")
    assert cells[4] == "+10%" and cells[5] == "overlap"
    assert cells[6].startswith("[+10%, +10%]") and cells[7] == "pretrained ahead"  # the same 10% on each
