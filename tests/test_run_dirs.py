"""Output directories: `rlhfkit run`, `train-rm --out` and `ppo --out` never write in or
delete a folder of the user's, refuse a run folder of an older rlhfkit with advice, write
nothing before the checks pass, read a config made for other hardware, and report a broken
YAML file in one line naming the file and the line."""

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.pipeline import check_run_dir, load_pipeline, preflight

TINY = Path(__file__).parent / "data" / "tiny_pipeline.yaml"


def _config(tmp_path: Path, run_dir: Path, *extra: str, ppo: str = "") -> Path:
    """The test suite's miniature pipeline, in `run_dir`, with extra top-level lines and
    extra PPO settings."""
    text = TINY.read_text().replace("RUN_DIR", str(run_dir))
    text = text.replace("max_new_tokens: 8}\neval", f"max_new_tokens: 8{ppo}}}\neval")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text + "".join(line + "\n" for line in extra))
    return path


def _users_folder(path: Path) -> Path:
    """Someone's own folder that happens to hold a config.yaml and an rm/ subfolder."""
    (path / "rm").mkdir(parents=True)
    (path / "config.yaml").write_text("my: own settings\n")
    (path / "rm" / "weights.bin").write_bytes(b"\x00\x01 not ours")
    return path


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones too), with a file's bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


def test_run_leaves_a_users_folder_byte_for_byte_and_says_why(tmp_path, cli):
    mine = _users_folder(tmp_path / "mine")
    before = _snapshot(mine)
    # A stage list that fails preflight: the folder must be refused before that, untouched.
    path = _config(tmp_path, mine, "stages: [train-rm]")
    result = cli("run", path, ok=False)
    assert _snapshot(mine) == before
    assert f"{mine} is not empty and was not made by rlhfkit" in _one_line(result)


def _mark(folder: Path, made_by: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".rlhfkit").write_text(json.dumps({"made_by": made_by}))


def test_a_users_folder_inside_a_run_directory_is_not_deleted(tmp_path, cli):
    run = tmp_path / "run"
    _mark(run, "run")  # a run directory of ours, its pairs done …
    _mark(run / "pairs", "pairs")
    (run / "pairs" / "done.json").write_text('{"summary": "3 pairs"}')
    _users_folder(tmp_path / "mine").rename(run / "rm")  # … where someone put their own rm/
    before = _snapshot(run)
    result = cli("run", _config(tmp_path, run, "stages: [train-rm]"), ok=False)
    assert _snapshot(run) == before
    assert f"{run / 'rm'} is not empty and was not made by rlhfkit" in _one_line(result)


def test_a_run_folder_of_an_older_rlhfkit_gets_one_line_of_advice(tmp_path, cli):
    old = tmp_path / "old-run"
    old.mkdir()
    path = _config(tmp_path, old)
    config = load_pipeline(path).model_dump(mode="json", by_alias=True, exclude={"stages"})
    (old / "pipeline.json").write_text(json.dumps(config))  # as the run wrote it, no marker
    (old / "config.yaml").write_text(path.read_text())
    before = _snapshot(old)
    line = _one_line(cli("run", path, "--stages", "train-rm", ok=False))
    assert f"{old} looks like the output of an older rlhfkit" in line and "new directory" in line
    assert _snapshot(old) == before


def test_train_rm_and_ppo_leave_a_users_out_folder_alone(tmp_path, cli, tiny_model):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n"
            for i in range(4)
        )
    )
    mine = _users_folder(tmp_path / "mine")
    before = _snapshot(mine)
    args = ["--pairs", pairs, "--out", mine, "--epochs", "1", "--held-out-fraction", "0"]
    result = cli("train-rm", *args, ok=False)
    assert _snapshot(mine) == before
    assert f"{mine} is not empty and was not made by rlhfkit" in _one_line(result)

    ppo = ["--out", mine, "--policy", tiny_model, "--reward", "scorer:profanity", "--steps", "1"]
    result = cli("ppo", *ppo, "--batch-size", "2", "--minibatches", "1", ok=False)
    assert _snapshot(mine) == before
    assert f"{mine} is not empty and was not made by rlhfkit" in _one_line(result)


def test_an_output_of_one_command_is_not_taken_by_another(tmp_path):
    from rlhfkit.files import check_ours, claim_directory, remove_ours

    rm = claim_directory(tmp_path / "rm", "train-rm")
    claim_directory(rm, "train-rm")  # its own command may write there again
    with pytest.raises(RlhfkitError, match="holds the output of rlhfkit train-rm, not of ppo"):
        check_ours(rm, "ppo")
    with pytest.raises(RlhfkitError, match="not of ppo"):
        remove_ours(rm, "ppo")
    assert rm.is_dir()
    remove_ours(rm, "train-rm")
    assert not rm.exists()


def test_a_run_refused_by_preflight_writes_nothing_so_the_fixed_config_runs(tmp_path, cli):
    run = tmp_path / "run"
    bad = _config(tmp_path, run, ppo=", reward: 'python:no_such_module_for_rlhfkit:score'")
    line = _one_line(cli("run", bad, ok=False))
    assert "no_such_module_for_rlhfkit" in line
    assert not run.exists()  # no pipeline.json, no config.yaml
    fixed = _config(tmp_path, run)  # as the error said: the reward fixed
    check_run_dir(load_pipeline(fixed))  # not "a run of a different config"


@pytest.mark.parametrize(("seeds", "where"), [([], ""), (["seeds: [0, 1]"], "seed-0: ")])
def test_an_eval_limit_beyond_the_split_is_one_line_before_any_work(tmp_path, cli, seeds, where):
    run = tmp_path / "run"
    path = _config(tmp_path, run, *seeds)
    path.write_text(path.read_text().replace("eval: {limit: 4,", "eval: {limit: 128,"))
    line = _one_line(cli("run", path, ok=False))
    assert (
        line
        == f"error: {where}eval limit 128 is more than the 127 prompts of builtin:rtp's eval split"
    )
    assert not run.exists()  # refused before generate, let alone PPO


def test_yaml_errors_are_one_line_naming_the_file_and_line(tmp_path, cli):
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"run_dir: {tmp_path / 'run'}\nseed: 1\npolicy: a: b\n")
    line = _one_line(cli("run", broken, ok=False))
    assert f"{broken}:3: invalid YAML" in line

    numbered = tmp_path / "numbered.yaml"
    numbered.write_text(f"run_dir: {tmp_path / 'run'}\n1: 2\n")
    line = _one_line(cli("run", numbered, ok=False))
    assert f"{numbered}:2: a setting's name must be text, not 1" in line

    nested = tmp_path / "ppo.yaml"
    nested.write_text("steps: 2\nlr: 0.001\n7: seven\n")
    line = _one_line(cli("ppo", "--out", tmp_path / "ppo", "--config", nested, ok=False))
    assert f"{nested}:3: a setting's name must be text, not 7" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "ppo").exists()


def test_a_text_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, cli):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("run_dir: café\n".encode("latin-1"))
    missing = tmp_path / "missing.yaml"
    assert _one_line(cli("run", latin1, ok=False)) == f"error: {latin1}: not UTF-8 text"
    assert _one_line(cli("run", missing, ok=False)).startswith(f"error: {missing}: cannot read (")
    assert _one_line(cli("run", tmp_path, ok=False)).startswith(f"error: {tmp_path}: cannot read (")

    store = f"sqlite:///{tmp_path / 'store.db'}"
    result = cli("project", "create", "p", "--instructions", latin1, "--store", store, ok=False)
    assert _one_line(result) == f"error: {latin1}: not UTF-8 text"

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "eval.json").write_bytes(b'{"policy": "caf\xe9"}')
    line = _one_line(cli("report", run, ok=False))
    assert line == f"error: {run / 'eval' / 'eval.json'}: not UTF-8 text"
    assert not (run / "report").exists()


def test_a_run_for_other_hardware_loads_and_its_eval_runs_anywhere(tmp_path, cli, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a cuda config is not foreign here")
    from rlhfkit.files import atomic_write, claim_directory
    from rlhfkit.pipeline import start_run_dir

    run = tmp_path / "run"
    path = _config(tmp_path, run, ppo=", device: cuda")
    config = load_pipeline(path)  # made on a GPU machine, read on this one
    assert config.ppo_config().device == "cuda"
    start_run_dir(config, str(path))
    for stage in ("pairs", "train-rm", "ppo"):  # as the GPU machine left it
        claim_directory(run / stage, stage)
        atomic_write(run / stage / "done.json", json.dumps({"summary": "", "seconds": 0}))
    preflight(config.model_copy(update={"stages": ["eval", "report"]}))

    (run / "ppo" / "done.json").unlink()  # but training here is refused when PPO would start
    line = _one_line(cli("run", path, "--stages", "ppo", ok=False))
    assert "PPO setting 'device': 'cuda': this machine has no CUDA device" in line
    assert [p.name for p in (run / "ppo").iterdir()] == [".rlhfkit"]  # nothing written there

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    emulated = _config(tmp_path, tmp_path / "bf16", ppo=", device: cpu, precision: bf16")
    assert load_pipeline(emulated).ppo_config().precision == "bf16"
