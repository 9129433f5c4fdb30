"""Seeds as a setting: `seeds:` in the YAML or `run --seeds 0,1,2` run the stages after pairs
once per seed in RUN/seed-N/, on the shared pairs, each seed resumable on its own; adding a
seed is the same run; a seed directory of another config is refused untouched;
RUN/summary.json holds each seed's numbers against the targets; and `rlhfkit report RUN`
makes the summary and the page over the seeds afresh."""

import json
import shutil
from pathlib import Path

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import claim_directory
from rlhfkit.pipeline import (
    check_run_dir,
    load_pipeline,
    run_pipeline,
    seed_config,
    start_run_dir,
    with_seeds,
)
from rlhfkit.seeds import (
    TargetConfig,
    build_seeds_report,
    lookup,
    summary_table,
    write_summary,
)
from test_run_dirs import _one_line

TINY = Path(__file__).parent / "data" / "tiny_pipeline.yaml"
HATESONAR = "scorer:hatesonar"


def _config(
    tmp_path: Path, *extra: str, run: Path | None = None, changes: dict | None = None
) -> Path:
    """The test suite's miniature pipeline in tmp_path/run, with extra top-level lines and
    its text changed by `changes` (old: new)."""
    text = TINY.read_text().replace("RUN_DIR", str(run or tmp_path / "run"))
    for old, new in (changes or {}).items():
        text = text.replace(old, new)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text + "".join(line + "\n" for line in extra))
    return path


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` (hidden ones too): a file's bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def _refused_untouched(cli, run: Path, *args) -> str:
    """The one-line error of `rlhfkit run ARGS`, which must leave `run` as it was."""
    before = _snapshot(run)
    line = _one_line(cli("run", *args, ok=False))
    assert _snapshot(run) == before
    return line


# --- bad input: one line, before any work ----------------------------------------------------


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("0,1,0", "seed 0 is listed twice"),
        ("0,one", "--seeds: 'one' is not a whole number"),
        ("1.5", "--seeds: '1.5' is not a whole number"),
        ("-1", "--seeds: '-1' is not a whole number"),
        ("0,,2", "--seeds: '' is not a whole number"),
        ("", "--seeds: no seeds given"),
    ],
)
def test_bad_seeds_on_the_command_line_are_one_line_before_any_work(tmp_path, cli, seeds, message):
    line = _one_line(cli("run", _config(tmp_path), "--seeds", seeds, ok=False))
    assert message in line
    assert not (tmp_path / "run").exists()


SEEDED_RM = {"train-rm: {": "seeds: [0, 1]\ntrain-rm: {seed: 4, "}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["seeds: []"], "'seeds': List should have at least 1 item"),
        (["seeds: [0, 2, 2]"], "seed 2 is listed twice"),
        (["seeds: [0, '1']"], "'seeds.1': Input should be a valid integer"),
        (["seeds: [0, 1.5]"], "'seeds.1': Input should be a valid integer"),
        (["seeds: [-3]"], "'seeds.0': Input should be greater than or equal to 0"),
        (["seeds: 2"], "'seeds': Input should be a valid list"),
        (["# train-rm: {seed: 4}"], "with seeds, each seed sets train-rm's seed"),
        (["targets: [{metric: perplexity}]"], "a target takes one bound"),
        (
            ["targets: [{metric: perplexity, at_most: 0.2, at_least: 0}]"],
            "a target takes one bound",
        ),
        (["targets: [{metric: perplexity, most: 0.2}]"], "'targets.0.most': Extra inputs"),
        (
            ["targets: [{metric: scorer:hatesonar.toxic, at_most: -0.5}]"],
            "target 'scorer:hatesonar.toxic' is not a number the evaluation reports; one of: "
            "scorer:hatesonar.mean, scorer:hatesonar.toxic_share",
        ),
    ],
)
def test_bad_seeds_and_targets_in_the_yaml_are_one_line_before_any_work(
    tmp_path, cli, lines, message
):
    path = _config(tmp_path, *lines, changes=SEEDED_RM if "seed: 4" in lines[0] else None)
    line = _one_line(cli("run", path, ok=False))
    assert message in line
    assert not (tmp_path / "run").exists()


def test_seeds_from_the_command_line_replace_the_configs(tmp_path):
    config = load_pipeline(_config(tmp_path, "seeds: [0, 1]"))
    assert config.seeds == [0, 1]
    assert with_seeds(config, [2]).seeds == [2]
    with pytest.raises(RlhfkitError, match="seed 3 is listed twice"):
        with_seeds(config, [3, 3])


def test_a_seed_runs_the_stages_after_pairs_in_its_own_directory_with_its_seed(tmp_path):
    config = load_pipeline(_config(tmp_path, "seeds: [0, 7]"))
    assert config.own_stages == ["generate", "label", "agreement", "pairs"]
    seven = seed_config(config, 7)
    run = tmp_path / "run"
    assert seven.run == run / "seed-7"
    assert seven.own_stages == ["train-rm", "ppo", "eval", "report"]
    assert seven.stage_dir("pairs") == run and seven.stage_dir("ppo") == run / "seed-7"
    assert seven.rm_config().seed == seven.ppo_config().seed == seven.eval_config().seed == 7
    assert seven.ppo_config().reward == f"rm:{run / 'seed-7' / 'rm'}"
    assert seven.eval_config().policy == str(run / "seed-7" / "ppo" / "policy")
    assert config.rm_config().seed == 0  # the shared stages keep the config's own seed


# --- seed directories: the same run, or refused untouched -------------------------------------


def test_adding_a_seed_or_a_target_is_the_same_run(tmp_path):
    config = load_pipeline(_config(tmp_path, "seeds: [0]"))
    start_run_dir(config)
    start_run_dir(seed_config(config, 0))
    more = with_seeds(config, [0, 1, 2]).model_copy(
        update={"targets": [TargetConfig(metric="length", at_least=-0.5)]}
    )
    check_run_dir(more)
    for seed in (0, 1, 2):
        check_run_dir(seed_config(more, seed))
    check_run_dir(config.model_copy(update={"seeds": None}))  # and so is a run without seeds


def _started(tmp_path: Path, name: str) -> Path:
    """A run directory started (marked, its configs saved) for seeds 0 and 1, with a PPO
    log of seed 1's."""
    run = tmp_path / name
    config = load_pipeline(_config(tmp_path, "seeds: [0, 1]", run=run))
    for part in (config, seed_config(config, 0), seed_config(config, 1)):
        start_run_dir(part)
    claim_directory(run / "seed-1" / "ppo", "ppo")
    (run / "seed-1" / "ppo" / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


def test_a_seed_directory_of_another_config_is_refused_and_left_untouched(tmp_path, cli):
    run = _started(tmp_path, "run")
    other = _started(tmp_path, "other")
    shutil.rmtree(run / "seed-1")
    shutil.copytree(other / "seed-1", run / "seed-1")  # copied from another run
    path = _config(tmp_path, "seeds: [0, 1]", run=run)
    line = _refused_untouched(cli, run, path)
    assert f"{run / 'seed-1'} holds a run of a different config (differs in run_dir)" in line

    # The shared settings changed under seed 0 (its copy of the config says 12 prompts).
    saved = json.loads((run / "seed-0" / "pipeline.json").read_text())
    saved["generate"]["limit"] = 12
    (run / "seed-0" / "pipeline.json").write_text(json.dumps(saved))
    shutil.rmtree(run / "seed-1")
    line = _refused_untouched(cli, run, path, "--seeds", "1,0")
    assert f"{run / 'seed-0'} holds a run of a different config (differs in generate)" in line


def test_a_users_folder_where_a_seed_would_run_is_refused_and_left_untouched(tmp_path, cli):
    run = _started(tmp_path, "run")
    mine = run / "seed-2"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    line = _refused_untouched(cli, run, _config(tmp_path, "seeds: [0, 1, 2]", run=run))
    assert f"{mine} is not empty and was not made by rlhfkit" in line


def test_every_seed_is_checked_before_any_work(tmp_path, cli):
    run = _started(tmp_path, "run")
    for stage in ("pairs", "train-rm"):  # seed 0 has its reward model, seed 1 has none
        folder = run / stage if stage == "pairs" else run / "seed-0" / stage
        claim_directory(folder, stage)
        (folder / "done.json").write_text('{"summary": "", "seconds": 0}')
    path = _config(tmp_path, "seeds: [0, 1]", run=run)
    line = _refused_untouched(cli, run, path, "--stages", "ppo")
    assert "seed-1: stage ppo needs the reward model of train-rm" in line


# --- the summary over seeds -----------------------------------------------------------------


def _eval_json(
    toxic_share: float, perplexity: float, interval: list | None, intervals: bool = True
) -> dict:
    """An eval.json as `rlhfkit eval` writes it, with these changes and `interval` as the toxic
    share's change's (null: the bootstrap could not place it); without `intervals`, as eval
    wrote it before it had any."""
    scorer = {"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4, "toxic_share": 0.2}
    model = {"kl": 0.0, "perplexity": 30.0, "distinct_2": 0.9, "length": 20.0, "reward": 0.1}
    change = {
        HATESONAR: {"mean": -0.1, "toxic_share": toxic_share},
        "perplexity": perplexity,
        "distinct_2": -0.02,
        "length": 0.05,
        "reward": 0.4,
    }
    result = {
        "config": {"scorers": [HATESONAR], "samples": 2, "seed": 0},
        "policy": "ppo/policy",
        "reference": "smollm2-135m-instruct",
        "held_out": {"prompts": 3, "split": "eval", "samples_per_prompt": 2},
        "models": {"before": {**model, HATESONAR: scorer}, "after": {**model, HATESONAR: scorer}},
        "change": change,
        "samples": [
            {
                "prompt": "<b>the prompt</b>",
                "before": {"completion": "x", "toxicity": {HATESONAR: 0.1}},
                "after": {"completion": "y", "toxicity": {HATESONAR: 0.2}},
            }
        ],
    }
    if intervals:
        result["change_ci"] = {
            HATESONAR: {"mean": [-0.2, 0.0], "toxic_share": interval},
            "perplexity": [0.0, 0.3],
            "distinct_2": [-0.05, 0.01],
            "length": [0.0, 0.1],
            "reward": [0.2, 0.6],
        }
    return result


def _evaluated(run: Path, seed: int, result: dict) -> None:
    folder = run / f"seed-{seed}" / "eval"
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(result))
    (folder / "done.json").write_text('{"summary": "", "seconds": 0}')


TARGETS = [
    TargetConfig(metric=f"{HATESONAR}.toxic_share", at_most=-0.5),
    TargetConfig(metric="perplexity", at_most=0.25),
    TargetConfig(metric="distinct_2", at_least=-0.1),
]


def test_the_summary_holds_each_seeds_numbers_and_whether_every_seed_met_each_target(
    tmp_path,
):
    run = tmp_path / "run"
    _evaluated(run, 0, _eval_json(-0.6, 0.1, [-0.8, -0.4]))
    _evaluated(run, 1, _eval_json(-0.4, 0.2, None, intervals=False))  # from before intervals
    _evaluated(run, 2, _eval_json(-0.5, 0.3, None))
    summary = write_summary(run, [0, 1, 2], TARGETS)
    assert json.loads((run / "summary.json").read_text()) == summary

    share, perplexity, distinct, *others = summary["metrics"]
    assert share["metric"] == f"{HATESONAR}.toxic_share" and share["target"] == {"at_most": -0.5}
    assert [s["value"] for s in share["seeds"]] == [-0.6, -0.4, -0.5]
    assert [s["ci"] for s in share["seeds"]] == [[-0.8, -0.4], None, None]
    assert [s["met"] for s in share["seeds"]] == [True, False, True]  # -0.5 is "at most -0.5"
    assert share["mean"] == pytest.approx(-0.5) and (share["min"], share["max"]) == (-0.6, -0.4)
    assert share["met"] is False
    assert [s["met"] for s in perplexity["seeds"]] == [True, True, False]
    assert perplexity["mean"] == pytest.approx(0.2) and perplexity["met"] is False
    assert distinct["met"] is True and distinct["mean"] == pytest.approx(-0.02)
    assert summary["all_met"] is False
    # Every other number of `change`, without a target, after the targets.
    assert [m["metric"] for m in others] == [f"{HATESONAR}.mean", "length", "reward"]
    assert all(m["target"] is None and m["met"] is None for m in others)
    assert [s["change"] for s in summary["per_seed"]] == [
        _eval_json(v, p, None)["change"] for v, p in ((-0.6, 0.1), (-0.4, 0.2), (-0.5, 0.3))
    ]

    header, rows = summary_table(summary)
    assert header == ["change", "target", "seed 0", "seed 1", "seed 2", "mean", "min", "max", "met"]
    assert rows[0] == [
        f"{HATESONAR}.toxic_share",
        "≤ -50.0%",
        "-60.0% [-80.0%, -40.0%]",
        "-40.0%",
        "-50.0%",
        "-50.0%",
        "-60.0%",
        "-40.0%",
        "no: seed 1",
    ]
    assert rows[2][-1] == "yes" and rows[2][1] == "≥ -10.0%"
    assert rows[-1][0] == "reward" and rows[-1][2] == "+0.400 [+0.200, +0.600]"


def test_a_seed_not_evaluated_yet_has_no_values_and_misses_every_target(tmp_path):
    run = tmp_path / "run"
    _evaluated(run, 0, _eval_json(-0.6, 0.1, [-0.8, -0.4]))
    (run / "seed-1" / "eval").mkdir(parents=True)  # its eval stage was interrupted
    (run / "seed-1" / "eval" / "eval.json").write_text("{")
    summary = write_summary(run, [0, 1], TARGETS[:1])
    (row,) = summary["metrics"][:1]
    assert [s["value"] for s in row["seeds"]] == [-0.6, None]
    assert row["mean"] == -0.6 and row["met"] is False and summary["all_met"] is False
    assert summary["per_seed"][1]["eval"] is None
    assert write_summary(run, [0], TARGETS[:1])["all_met"] is True  # seed 1 taken off the list


def test_a_metric_is_a_key_of_change_or_split_at_its_last_dot():
    change = {"classifier:my.model:toxic": {"mean": 0.1}, "perplexity": 0.2, "a.b": 0.3}
    assert lookup(change, "classifier:my.model:toxic.mean") == 0.1
    assert lookup(change, "perplexity") == 0.2 and lookup(change, "a.b") == 0.3
    for missing in ("classifier:my.model:toxic.share", "distinct_2", "model:toxic.mean"):
        with pytest.raises(KeyError):
            lookup(change, missing)


def test_the_report_over_seeds_is_one_escaped_self_contained_page(tmp_path):
    run = tmp_path / "<b>run"
    _evaluated(run, 0, _eval_json(-0.6, 0.1, [-0.8, -0.4]))
    _evaluated(run, 1, _eval_json(-0.4, 0.2, None))
    for seed in (0, 1):
        lines = [{"step": s, "reward_mean": 0.1 * s + seed, "kl": 0.5 * s} for s in (1, 2, 3)]
        (run / f"seed-{seed}" / "ppo").mkdir()
        (run / f"seed-{seed}" / "ppo" / "metrics.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines)
        )
    targets = [TargetConfig(metric="length", at_least=-0.5)]
    page = build_seeds_report(run, write_summary(run, [0, 1], targets)).read_text()
    assert "Every target was met on every seed" in page
    assert "-60.0% [-80.0%, -40.0%]" in page and "Seed 1" in page
    assert page.count("data:image/png;base64,") == 1  # the curves, a line per seed
    assert (run / "report" / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert "<b>run" not in page and "&lt;b&gt;run" in page  # nothing from a run is markup
    assert "src=" not in page.replace('src="data:image/png', "")  # nothing fetched


def test_report_on_a_run_over_seeds_makes_its_summary_and_page_afresh(tmp_path, cli):
    run = tmp_path / "run"
    for seed in (0, 1, 2):
        claim_directory(run / f"seed-{seed}", "run")
    (run / "seed-9").mkdir()  # a folder of the user's: no seed's
    _evaluated(run, 0, _eval_json(-0.6, 0.1, [-0.8, -0.4]))
    page = run / "report" / "report.html"

    # Before the run's first summary: every seed directory it holds, without targets.
    assert cli("report", run).output.strip() == f"report: {page}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["all_met"] is None
    assert "Seed 2" in page.read_text()

    # After: the seeds and targets of the summary the run wrote last, with the evaluations
    # made since (seed 1's).
    write_summary(run, [1, 0], TARGETS[:1])
    _evaluated(run, 1, _eval_json(-0.4, 0.2, None))
    cli("report", run)
    summary = json.loads((run / "summary.json").read_text())
    (share,) = [row for row in summary["metrics"] if row["target"]]
    assert summary["seeds"] == [1, 0] and share["target"] == {"at_most": -0.5}
    assert [s["value"] for s in share["seeds"]] == [-0.4, -0.6] and summary["all_met"] is False
    text = page.read_text()
    assert "Not every target was met on every seed" in text and "Seed 2" not in text
    assert "-60.0% [-80.0%, -40.0%]" in text


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"seeds": [], "metrics": []}', '{"seeds": [0], "metrics": [{}]}']
)
def test_report_on_a_malformed_summary_is_one_line_naming_it(tmp_path, cli, text):
    run = tmp_path / "run"
    _evaluated(run, 0, _eval_json(-0.6, 0.1, [-0.8, -0.4]))
    (run / "summary.json").write_text(text)
    line = _one_line(cli("report", run, ok=False))
    assert (
        line
        == f"error: {run / 'summary.json'}: not a summary over seeds as `rlhfkit run` writes it"
    )
    assert not (run / "report").exists()


# --- a miniature run over seeds, end to end ---------------------------------------------------


SHARED = ["generate", "label", "agreement", "pairs"]


def _per_seed(*seeds: int) -> list[str]:
    return [f"seed-{s}/{stage}" for s in seeds for stage in ("train-rm", "ppo", "eval", "report")]


def _rerun(path: Path, seeds: list[int], status: str = "ran") -> list[str]:
    """Run the config again (from Python) with these seeds: the stages that had `status`."""
    rows = run_pipeline(with_seeds(load_pipeline(path), seeds))
    return [stage for stage, was, _, _ in rows if was == status]


@pytest.mark.slow
def test_seed_runs_share_the_pairs_land_in_their_own_directories_resume_and_summarise(
    tmp_path, cli, tiny_model
):
    run = tmp_path / "run"
    targets = [
        "targets:",
        "  - {metric: length, at_least: -10}",  # a relative change is never below -100%
        "  - {metric: distinct_2, at_most: -5}",
    ]
    path = _config(tmp_path, "seeds: [0, 1]", f"policy: {tiny_model}", *targets)
    first = cli("run", path)
    assert "done before" not in first.output and "over the seeds [95% interval]" in first.output

    for stage in SHARED:  # once, in the run directory
        assert (run / stage / "done.json").is_file()
    assert not any((run / stage).exists() for stage in ("rm", "train-rm", "ppo", "eval"))
    for seed in (0, 1):
        own = run / f"seed-{seed}"
        assert not (own / "pairs").exists() and not (own / "generate").exists()
        info = json.loads((own / "rm" / "model" / "reward.json").read_text())
        assert info["config"]["seed"] == seed
        assert info["data"]["pairs_file"] == str(run / "pairs" / "pairs.jsonl")
        assert json.loads((own / "ppo" / "config.json").read_text())["seed"] == seed
        assert json.loads((own / "eval" / "eval.json").read_text())["config"]["seed"] == seed
        assert (own / "report" / "report.html").is_file()
    logs = [(run / f"seed-{s}" / "ppo" / "metrics.jsonl").read_text() for s in (0, 1)]
    assert logs[0] != logs[1]  # two seeds, two trainings

    summary = json.loads((run / "summary.json").read_text())
    length, distinct = summary["metrics"][:2]
    for seed in (0, 1):
        change = json.loads((run / f"seed-{seed}" / "eval" / "eval.json").read_text())["change"]
        assert length["seeds"][seed]["value"] == change["length"]
        assert distinct["seeds"][seed]["value"] == change["distinct_2"]
    assert (length["met"], distinct["met"], summary["all_met"]) == (True, False, False)
    page = (run / "report" / "report.html").read_text()
    assert "Not every target was met on every seed" in page and "seed-1/report/report.html" in page

    assert _rerun(path, [0, 1], "skipped") == SHARED + _per_seed(0, 1)
    assert _rerun(path, [0, 1]) == ["summary", "report"]  # made afresh each time, in seconds

    # An interrupted PPO of seed 1 (no done.json): it resumes, and only seed 1 goes on.
    (run / "seed-1" / "ppo" / "done.json").unlink()
    assert _rerun(path, [0, 1]) == [*_per_seed(1)[1:], "summary", "report"]

    # Pairs made again: every seed's stages are made from them again.
    (run / "pairs" / "done.json").unlink()
    assert _rerun(path, [0, 1]) == ["pairs", *_per_seed(0, 1), "summary", "report"]

    # Adding a seed runs only that seed; taking seeds off runs nothing.
    assert _rerun(path, [0, 1, 2]) == [*_per_seed(2), "summary", "report"]
    summary = json.loads((run / "summary.json").read_text())
    assert [s["seed"] for s in summary["per_seed"]] == [0, 1, 2]
    assert _rerun(path, [2]) == ["summary", "report"]
    assert json.loads((run / "summary.json").read_text())["seeds"] == [2]
