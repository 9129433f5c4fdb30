"""Conventions every command keeps: --config FILE, defaults in --help, the same flag names for
the same things (old names kept as deprecated aliases), --version with the libraries'."""

from __future__ import annotations

import pytest
import typer

from rlhfkit.cli import app


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own click classes)
            yield from _commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and p.name != "help"]


# run and compare take their config file as the argument; these have nothing to set
WITHOUT_SETTINGS = {"run", "compare", "install-data", "project list", "report"}


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - WITHOUT_SETTINGS))
def test_every_command_with_settings_takes_a_config_file(name):
    assert any("--config" in option.opts for option in _options(COMMANDS[name]))


def test_no_help_text_holds_brackets_which_the_help_renderer_would_swallow():
    for name, command in COMMANDS.items():
        for option in _options(command):
            assert "[" not in (option.help or ""), f"rlhfkit {name} {option.opts[0]}"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("ppo", ["[default: smollm2-135m-instruct]", "[default: gae]", "[default: lora]"]),
        ("dpo", ["[default: sigmoid]", "[default: 0.1]"]),
        ("sft", ["[default: 0.0002]"]),
        ("train-rm", ["[default: minilm-l6]", "[default: 5e-05]", "[default: normalise]"]),
        ("eval", ["[default: builtin:rtp]", "[default: 2]", "scorer:hatesonar,"]),
    ],
)
def test_help_shows_the_defaults_of_the_settings_class(cli, monkeypatch, command, shown):
    monkeypatch.setenv("COLUMNS", "400")  # one line an option
    text = cli(command, "--help").stdout
    for default in shown:
        assert default in text, default


def test_settings_class_defaults_in_help_match_the_class(cli, monkeypatch):
    from rlhfkit.train.ppo.step import PPOConfig

    monkeypatch.setenv("COLUMNS", "400")
    lines = cli("ppo", "--help").stdout.splitlines()
    line = next(x for x in lines if "--init-kl-coef" in x)
    assert f"[default: {PPOConfig().init_kl_coef}]" in line
    # and a flag left out still does not override a config file: the parser saw None
    lr = next(p for p in COMMANDS["ppo"].params if p.name == "lr")
    assert lr.default is None


def test_a_config_file_gives_a_commands_options_and_the_command_line_wins(cli, tmp_path):
    from rlhfkit.feedback.store import Store, project_summaries

    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = tmp_path / "project.yaml"
    config.write_text(f"store: {url}\ncriterion: toxicity\n")
    cli("project", "create", "a", "--config", config)
    cli("project", "create", "b", "--config", config, "--criterion", "honesty")
    store = Store(url)
    try:
        criteria = {p["name"]: p["criterion"] for p in project_summaries(store)}
    finally:
        store.close()
    assert criteria == {"a": "toxicity", "b": "honesty"}


def test_a_config_file_with_an_unknown_option_is_one_line(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("criterion: toxicity\nmax-tokens: 3\n")
    answer = cli("project", "create", "a", "--config", config, ok=False)
    assert answer.exit_code == 1
    assert "'max-tokens' is not an option of" in answer.output and "project create" in answer.output
    assert "criterion" in answer.output and "Traceback" not in answer.output


def test_a_settings_commands_config_file_is_its_settings_class(cli, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("policy: x\nbest_of: 4\n")  # best-of needs a reward
    answer = cli("eval", "--config", config, ok=False)
    assert "best_of needs a reward" in answer.output
    config.write_text("epochs: 0\n")
    answer = cli("train-rm", "--pairs", "p.jsonl", "--out", "o", "--config", config, ok=False)
    assert "reward model setting 'epochs'" in answer.output


def test_an_old_flag_name_still_works_and_says_the_new_one(cli):
    result = cli("examples", "tictactoe", "--iterations", "1")
    assert "--iterations is deprecated: use --steps" in result.output
    assert "greedy play over 1,000 games" in result.output
    answer = cli("eval", "--policy", "x", "--samples", "2", "--samples-per-prompt", "3", ok=False)
    assert "--samples and --samples-per-prompt are the same option" in answer.output


def test_completions_per_prompt_has_one_name_across_commands():
    for name in ("generate", "eval", "ppo"):
        flags = {o for p in _options(COMMANDS[name]) for o in p.opts}
        assert "--samples-per-prompt" in flags, name


def test_version_names_the_libraries(cli):
    from importlib.metadata import version

    text = cli("--version").stdout
    assert text.startswith("rlhfkit ")
    for package in ("torch", "transformers", "peft"):
        assert f"{package} {version(package)}" in text


def test_a_table_printed_to_a_pipe_keeps_every_character(tmp_path):
    """Piped or logged, a table takes the width it needs (rich would cut it to 80 columns,
    numbers included). Run as a user runs it: a process whose stdout is a pipe."""
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'store.db'}"
    long = "a-criterion-long-enough-to-push-the-table-well-past-eighty-columns-of-text"
    for name in ("first-project-with-a-long-name", "second-project-with-a-long-name"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rlhfkit",
                "project",
                "create",
                name,
                "--criterion",
                long,
                "--store",
                store,
            ],  # fmt: skip
            check=True,
            capture_output=True,
        )
    listed = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "project", "list", "--store", store],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert long in listed and "first-project-with-a-long-name" in listed and "…" not in listed


def test_every_config_help_gives_an_example_of_the_commands_own_options(cli):
    """`--config`'s help names a key the command has (`serve` has no max_new_tokens)."""
    import re

    import typer

    from rlhfkit.cli import app

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            if getattr(sub, "commands", None):
                yield from walk(sub, [*path, name])
            else:
                yield [*path, name]

    checked = 0
    for path in walk(typer.main.get_command(app), []):
        text = " ".join(cli(*path, "--help").output.split())
        text = re.sub(r"[│╭╮╰╯─]", " ", text)
        text = " ".join(text.split())
        match = re.search(r"\(e\.g\. ([a-z_]+):", text)
        if "--config" not in text:
            continue
        assert match, f"rlhfkit {' '.join(path)} --config help has no example"
        assert "--" + match.group(1).replace("_", "-") in text, (path, match.group(1))
        checked += 1
    assert checked >= 15
