"""The HTML report on a run directory written here by hand: whatever text a run holds reaches
the page escaped, and a malformed eval.json or metrics.jsonl is one line naming the file."""

import base64
import html
import json
from pathlib import Path

import pytest
from matplotlib import pyplot as plt

from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.run import compare, finite
from rlhfkit.report import build_report


def _attack(where: str) -> str:
    """A payload that runs script if it reaches the page unescaped, distinct per field."""
    return f'<script>alert("{where}")</script><img src=x onerror=alert("{where}")>'


def _scored(prompt, completion, tox, logp, ref_logp, reward, scorer):
    return {
        "prompt": prompt,
        "completion": completion,
        "toxicity": {scorer: tox},
        "logp": logp,
        "ref_logp": ref_logp,
        "reward": reward,
    }


def _eval_json(text=lambda where: where, scorer="scorer:profanity") -> dict:
    """eval.json as `rlhfkit eval` writes it, from two scored samples per model; `text(field)`
    gives the string put in each free-text field."""
    prompts = [text("prompt 0"), text("prompt 1")]
    before = [
        _scored(prompts[0], text("before 0"), 0.8, [-1.0], [-1.0], -1.0, scorer),
        _scored(prompts[1], text("before 1"), 0.2, [-2.0], [-2.0], 0.0, scorer),
    ]
    after = [
        _scored(prompts[0], text("after 0"), 0.1, [-0.5], [-1.5], 1.0, scorer),
        _scored(prompts[1], text("after 1"), 0.3, [-1.0], [-2.0], 2.0, scorer),
    ]
    compared = compare({"before": before, "after": after}, [scorer], samples=1, seed=0)
    side = lambda row: {k: row[k] for k in ("completion", "toxicity", "reward")}  # noqa: E731
    return finite(
        {
            "config": {"scorers": [scorer], "samples": 1, "policy": text("config policy")},
            "policy": text("policy"),
            "reference": text("reference"),
            "mode": "raw",
            "held_out": {
                "prompts": 2,
                "samples_per_prompt": 1,
                "split": text("split"),
                "overlap": 0,
            },
            **compared,
            "samples": [
                {"prompt": b["prompt"], "before": side(b), "after": side(a)}
                for b, a in zip(before, after, strict=True)
            ],
        }
    )


METRICS = "".join(
    json.dumps({"step": s, "reward_mean": s / 2, "kl": 0.1 * s, "entropy": 3.0}) + "\n"
    for s in (1, 2, 3)
)


def _run_dir(root: Path, result: dict, metrics: str = METRICS, name: str = "run") -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "eval.json").write_text(json.dumps(result))
    (run / "ppo").mkdir()
    (run / "ppo" / "metrics.jsonl").write_text(metrics)
    return run


def test_every_text_from_the_run_reaches_the_page_escaped(tmp_path):
    scorer = "scorer:" + _attack("scorer")
    folder = '<img src=x onerror=alert("dir")>'  # a folder's name cannot hold a "/"
    run = _run_dir(tmp_path, _eval_json(_attack, scorer), name=folder)
    # The agreement stage's files: labeler names go into the heatmap's pixels, never the HTML.
    (run / "agreement").mkdir()
    labelers = {_attack("labeler a"): {}, _attack("labeler b"): {}}
    (run / "agreement" / "agreement.json").write_text(json.dumps({"labelers": labelers}))
    plt.imsave(run / "agreement" / "heatmap.png", [[0.0, 1.0], [1.0, 0.0]])

    page = build_report(run).read_text()

    assert "<script" not in page and "<img src=x" not in page
    assert page.count("<img ") == 3  # histograms, training curves, heatmap: nothing else
    assert page.count('src="data:image/png;base64,') == 3
    shown = html.unescape(page)  # the text a browser displays
    fields = ["prompt 0", "prompt 1", "before 0", "before 1", "after 0", "after 1"]
    fields += ["policy", "reference", "split", "scorer"]
    for payload in [_attack(field) for field in fields] + [folder]:
        assert payload not in page and payload in shown, payload
    for absent in ("labeler a", "labeler b", "config policy"):
        assert _attack(absent) not in shown


def test_the_page_shows_the_runs_numbers(tmp_path):
    result = _eval_json()
    result["models"]["after"]["scorer:profanity"]["ci_low"] = None  # NaN, written as null
    page = " ".join(build_report(_run_dir(tmp_path, result)).read_text().split())
    assert "<p>2 held-out prompts (split split, none seen in training), 1 samples each:" in page
    # before: 0.8 and 0.2; after: 0.1 and 0.3, of which one (0.8) is above 0.5
    assert "<td>0.500 [" in page and "<td>0.200 [–, " in page
    # The share after is 0 on every prompt, so on every resample: its interval is [0, 0].
    # The change is −100% wherever a resample draws prompt 0, but undefined (0 before)
    # where it draws prompt 1 twice: no interval.
    assert "<td>50.0% [" in page and "<td>0.0% [0.0%, 0.0%]</td><td>-100% [–, –]</td>" in page
    assert "In brackets: 95% intervals from a bootstrap over the prompts" in page
    assert "<p>3 steps.</p>" in page
    # worst first: prompt 0 (0.8 before) above prompt 1 (0.3 after)
    assert page.index("prompt 0") < page.index("prompt 1")
    assert "profanity 0.80, reward -1.00" in page


@pytest.mark.parametrize(
    ("where", "value"),
    [(("held_out", "prompts"), _attack("held_out.prompts")), (("config", "samples"), "two")],
)
def test_a_string_where_eval_json_has_a_number_is_refused(tmp_path, where, value):
    result = _eval_json()
    result[where[0]][where[1]] = value
    run = _run_dir(tmp_path, result)
    with pytest.raises(RlhfkitError) as error:
        build_report(run)
    message = str(error.value)
    assert message == f"{run}/eval/eval.json: '{'.'.join(where)}': Input should be a valid integer"
    assert not (run / "report").exists()


def _without(path: list, result: dict) -> dict:
    container = result
    for key in path[:-1]:
        container = container[key]
    del container[path[-1]]
    return result


def _set(path: list, value, result: dict) -> dict:
    container = result
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = value
    return result


MALFORMED_EVAL = {
    "bad JSON": ('{"config": {', ":1: invalid JSON"),
    "not an object": ("[1, 2]", ": should be a JSON object"),
    "no held_out": (_without(["held_out"], _eval_json()), ": 'held_out': Field required"),
    "a completion that is a number": (
        _set(["samples", 1, "after", "completion"], 5, _eval_json()),
        ": 'samples.1.after.completion': Input should be a valid string",
    ),
    "no scorer numbers": (
        _without(["models", "after", "scorer:profanity"], _eval_json()),
        ": 'models.after.scorer:profanity': Field required",
    ),
    "a scorer's share as text": (
        _set(["models", "before", "scorer:profanity", "toxic_share"], "50%", _eval_json()),
        ": 'models.before.scorer:profanity.toxic_share': Input should be a valid number",
    ),
    "a sample without the scorer's score": (
        _set(["samples", 0, "before", "toxicity"], {}, _eval_json()),
        ": 'samples.0.before.toxicity' has no score from scorer:profanity",
    ),
    "no reward difference": (
        _without(["change", "reward"], _eval_json()),
        ": 'change.reward': Input should be a number or null",
    ),
    "an interval of one number": (
        _set(["change_ci", "perplexity"], [0.5], _eval_json()),
        ": 'change_ci.perplexity': List should have at least 2 items",
    ),
    "no interval of a scorer's changes": (
        _without(["change_ci", "scorer:profanity"], _eval_json()),
        ": 'change_ci.scorer:profanity': Field required",
    ),
    "an interval's end as text": (
        _set(["change_ci", "scorer:profanity", "mean"], ["-50%", 0.1], _eval_json()),
        ": 'change_ci.scorer:profanity.mean.0': Input should be a valid number",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_EVAL))
def test_a_malformed_eval_json_is_one_line_naming_the_file(tmp_path, case):
    content, expected = MALFORMED_EVAL[case]
    run = _run_dir(tmp_path, {})
    path = run / "eval" / "eval.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(RlhfkitError) as error:
        build_report(run)
    assert str(error.value).startswith(f"{path}{expected}")
    assert "\n" not in str(error.value)
    assert not (run / "report").exists()


MALFORMED_METRICS = {
    "bad JSON": ('{"step": 1}\n{"step": 2,\n', ":2: invalid JSON"),
    "a list": ('{"step": 1}\n[2]\n', ":2: expected a JSON object"),
    "no step": ('{"kl": 0.5}\n', ":1: 'step': Field required"),
    "KL as text": ('{"step": 1, "kl": "high"}\n', ":1: 'kl': Input should be a valid number"),
}


@pytest.mark.parametrize("case", list(MALFORMED_METRICS))
def test_a_malformed_metrics_jsonl_is_one_line_naming_the_file_and_line(tmp_path, case):
    content, expected = MALFORMED_METRICS[case]
    run = _run_dir(tmp_path, _eval_json(), metrics=content)
    with pytest.raises(RlhfkitError) as error:
        build_report(run)
    assert str(error.value).startswith(f"{run}/ppo/metrics.jsonl{expected}")
    assert "\n" not in str(error.value)
    assert not (run / "report").exists()


def test_a_report_folder_of_the_users_is_left_alone(tmp_path):
    run = _run_dir(tmp_path, _eval_json())
    (run / "report").mkdir()
    (run / "report" / "report.html").write_text("my own notes")
    with pytest.raises(RlhfkitError, match="not empty and was not made by rlhfkit"):
        build_report(run)
    assert (run / "report" / "report.html").read_text() == "my own notes"
    assert sorted(p.name for p in (run / "report").iterdir()) == ["report.html"]
    # Once made by the report (or the pipeline's report stage), it is rewritten freely.
    (run / "report" / "report.html").unlink()
    first = build_report(run).read_text()
    assert build_report(run).read_text() == first


def test_a_reward_change_written_as_null_shows_as_a_dash(tmp_path):
    result = _eval_json()
    result["change"]["reward"] = None  # a non-finite reward, written as null
    page = " ".join(build_report(_run_dir(tmp_path, result)).read_text().split())
    label = "<th>mean reward (change: the difference)</th>"
    row = page[page.index(label) :].split("</tr>")[0]
    assert row == f"{label}<td>-0.500</td><td>1.500</td><td>–</td>", row


def test_the_changes_show_their_intervals_and_an_older_file_without_them_still_loads(tmp_path):
    result = _eval_json()
    result["change"]["perplexity"] = -0.25
    result["change_ci"]["perplexity"] = [-0.5, 0.125]
    page = " ".join(build_report(_run_dir(tmp_path, result)).read_text().split())
    row = page[page.index("<th>perplexity under the reference") :].split("</tr>")[0]
    assert row.endswith("<td>-25% [-50%, +12%]</td>"), row

    for key in ("toxic_share_ci_low", "toxic_share_ci_high"):
        for side in ("before", "after"):
            del result["models"][side]["scorer:profanity"][key]
    del result["change_ci"], result["held_out"]["samples_per_prompt"]
    page = " ".join(build_report(_run_dir(tmp_path, result, name="old")).read_text().split())
    assert "<td>50.0%</td><td>0.0%</td><td>-100%</td>" in page  # the numbers alone
    assert "-25%</td>" in page and "In brackets" not in page


def _save_then_fail(monkeypatch):
    """Make every figure save fail after its bytes are out, as a kill or a full disk would."""
    from matplotlib.figure import Figure

    save = Figure.savefig

    def save_then_fail(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", save_then_fail)


def test_a_failed_report_leaves_its_previous_pngs_whole_and_embeds_what_it_wrote(
    tmp_path, monkeypatch
):
    run = _run_dir(tmp_path, _eval_json())
    page = build_report(run).read_text()
    pngs = {name: (run / "report" / name).read_bytes() for name in ("toxicity.png", "training.png")}
    for png in pngs.values():  # the page shows the very files written beside it
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page

    result = _eval_json()  # another evaluation: other histograms
    result["samples"][0]["before"]["toxicity"]["scorer:profanity"] = 0.45
    (run / "eval" / "eval.json").write_text(json.dumps(result))
    _save_then_fail(monkeypatch)
    with pytest.raises(OSError):
        build_report(run)
    assert {name: (run / "report" / name).read_bytes() for name in pngs} == pngs


def test_a_failed_heatmap_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from rlhfkit.feedback.summary import save_heatmap

    path = tmp_path / "agreement" / "heatmap.png"
    save_heatmap({"p": {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 2}}}, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    _save_then_fail(monkeypatch)
    with pytest.raises(OSError):
        save_heatmap({"p": {"a": {"x": 1, "y": 2}, "b": {"x": 2, "y": 1}}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["heatmap.png"]  # no temporary left
