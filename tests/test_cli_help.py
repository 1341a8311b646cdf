"""A CLI with help: every command answers --help with its own usage (``test_smoke.py``); ``zoo compare --help``
lists its keys and presets; ``zoo train --help`` keeps Hydra's groups and says how to see the composed config;
a mistyped command or option is answered with the nearest valid one."""

import pytest

from zoo.cli import main
from zoo_cli import zoo


@pytest.mark.parametrize(("argv", "suggestion"), [(["comapre"], "did you mean compare?"),
                                                  (["data", "chek", "x.jsonl"], "did you mean data check?"),
                                                  (["exprot", "run"], "did you mean export?")])
def test_a_mistyped_command_gets_the_nearest_one(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and suggestion in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "suggestion"), [(["report", "runs", "--outt", "x"], "did you mean --out?"),
                                                  (["export", "run", "--out", "x", "--mreg"], "did you mean --merge?"),
                                                  (["label", "--inptu", "f.jsonl"], "did you mean --input?")])
def test_a_mistyped_option_gets_the_nearest_one(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and suggestion in capsys.readouterr().err


def test_compare_help_lists_its_presets_and_keys(capsys):
    main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "compare=frontier" in out and "the reward-vs-KL frontier" in out and "compare=smollm2_gpu" in out
    assert "compare.seeds=[0, 1, 2]" in out and "compare.best_of_n=" in out and "compare.launcher=joblib" in out


def test_train_help_keeps_hydras_groups_and_says_how_to_see_the_config(tmp_path):
    out = zoo("train", "--help", cache=tmp_path).stdout
    assert "== Configuration groups ==" in out and "algo: " in out
    assert "zoo train [overrides] --cfg job" in out
