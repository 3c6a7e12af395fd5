"""Hyper-parameter search (run_hyper.py, prism_recbole/hyper.py): RecBole's HyperTuning with our
objective, without ray, on tiny data (and on the bundled dataset cut to its first interactions)."""
import os
import subprocess
import sys

import pytest
import yaml

import run_hyper
from prism_recbole import hyper
from prism_recbole.trainer import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_FLAG_NAMES = {f[2:] for f in run_hyper.OWN_FLAGS} - {"model", "dataset"}


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def tiny_files(tmp_path, tiny):
    """A config file for the tiny dataset and a small .hyper file."""
    config_file = _write(tmp_path / "tiny.yaml", yaml.safe_dump(dict(tiny, epochs=2)))
    params_file = _write(tmp_path / "tiny.hyper",
                         "prism_temperature choice [0.5,1.0]\n"
                         "learning_rate loguniform -7.0,-4.0\n"
                         "prism_expert_hidden quniform 8,16,8\n")
    return config_file, params_file


def _trial_config(trial):
    return load_checkpoint(trial.result["checkpoint"])["config"]


def test_two_trials_on_tiny_data(tmp_path, tiny_files, monkeypatch, capsys):
    config_file, params_file = tiny_files
    out = tmp_path / "results" / "hyper.txt"
    argv = ["--dataset=tiny", f"--config_files={config_file}", f"--params_file={params_file}",
            "--max_evals=2", f"--output_file={out}", "--keep_checkpoints=all", "--epochs=1",
            "--search_seed", "3"]
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"] + argv)
    result = run_hyper.main(argv)

    trials = result.trials
    assert len(trials) == 2 and not result.stopped_early
    assert trials[0].params != trials[1].params
    for trial in trials:
        assert set(trial.params) == {"prism_temperature", "learning_rate", "prism_expert_hidden"}
        assert trial.params["prism_temperature"] in (0.5, 1.0)
        assert 0.0009 < trial.params["learning_rate"] < 0.0184
        assert trial.params["prism_expert_hidden"] in (8, 16)
        assert type(trial.params["prism_expert_hidden"]) is int
        # what the model was really built with: the trial's values, --epochs=1 from the command
        # line (over epochs: 2 in the config file), and none of run_hyper's own flags
        config = _trial_config(trial)
        for name, value in trial.params.items():
            assert config[name] == value, name
        assert config["epochs"] == 1
        assert not OWN_FLAG_NAMES & set(config)
        assert set(hyper.RECBOLE_RESULT_KEYS) <= set(trial.result)

    # the best is one of the trials, chosen on the validation score only
    assert result.best_params in [t.params for t in trials]
    scores = [t.result["best_valid_score"] for t in trials]
    assert result.best_result["best_valid_score"] == max(scores)
    assert result.best_trial.params == result.best_params

    # RecBole's export_result file: one block per trial
    text = out.read_text()
    assert text.count("Valid result:") == 2 and text.count("Test result:") == 2
    for trial in trials:
        assert trial.params_str in text

    printed = capsys.readouterr().out
    assert "trial 1/2: " in printed and "trial 2/2: " in printed
    assert "best params: " + hyper.format_params(result.best_params) in printed
    assert f"results:     {out}" in printed

    assert "ray" not in sys.modules
    assert not getattr(sys.modules.get("pkg_resources"), "_prism_recbole_stand_in", False)


def test_exhaustive_search_distinct_grid_points_best_checkpoint_kept(tmp_path, tiny_files,
                                                                    monkeypatch, capsys):
    config_file, _ = tiny_files
    grid = _write(tmp_path / "grid.hyper",
                  "prism_temperature choice [0.5,1.0]\nlearning_rate choice [0.001,0.01]\n")
    result = hyper.search("PRISM_SASRec", "tiny", grid, config_file_list=[config_file],
                          config_dict={"epochs": 1}, algo="exhaustive", max_evals=2,
                          output_file=str(tmp_path / "grid.txt"))
    assert result.max_evals == 2  # the 4-point grid, capped at max_evals
    assert len(result.trials) == 2 and result.trials[0].params != result.trials[1].params
    kept = [t.result["checkpoint"] for t in result.trials if t.result["checkpoint"]]
    assert kept == [result.best_result["checkpoint"]] and os.path.isfile(kept[0])
    saved_dir = os.path.dirname(kept[0])
    assert [f for f in os.listdir(saved_dir) if f.endswith(".pth")] == [os.path.basename(kept[0])]
    assert "trial 2/2: " in capsys.readouterr().out


def test_objective_function_is_a_drop_in_for_recboles(tiny):
    result = hyper.objective_function(
        config_dict=dict(tiny, model="PRISM_SASRec", dataset="tiny", epochs=1), saved=False)
    assert set(hyper.RECBOLE_RESULT_KEYS) <= set(result)
    assert result["model"] == "PRISM_SASRec" and result["valid_score_bigger"] is True
    assert "ndcg@10" in result["best_valid_result"] and "ndcg@10" in result["test_result"]


BAD_LINES = [
    ("# learning rate on a log scale", "no comments"),
    ("learning_rate  loguniform -9,-4", "single spaces"),
    ("learning_rate\tloguniform -9,-4", "not tabs"),
    ("learning_rate [0.1,0.2]", "expected 'name kind values'"),
    ("learning_rate lognormal 0,1", "unknown kind 'lognormal'"),
    ("learning_rate loguniform -4,-9", "loguniform needs low < high"),
    ("learning_rate loguniform 0.0001,0.01", "loguniform takes natural logarithms"),
    ("learning_rate loguniform -9", "expected low,high"),
    ("learning_rate uniform a,b", "expected low,high"),
    ("prism_expert_hidden quniform 8,16,0", "q > 0"),
    ("prism_temperature choice 0.5", "non-empty list"),
    ("prism_temperature choice [0.5,", "Python list of literals"),
    ("prism_temprature choice [0.5,1.0]", "prism_temprature is not an option of PRISM_SASRec"),
    ("prism_margin choice [0.5,1.0]", "already searched on line 2"),
]


@pytest.mark.parametrize("line,expected", BAD_LINES)
def test_a_bad_params_line_is_reported_with_file_and_line(tmp_path, tiny_files, monkeypatch,
                                                          capsys, line, expected):
    config_file, _ = tiny_files
    params_file = _write(tmp_path / "bad.hyper",
                         f"prism_lambda_uni loguniform -4.6,0.0\nprism_margin uniform 0.5,2.0\n{line}\n")
    out = tmp_path / "never.txt"
    argv = ["--dataset=tiny", f"--config_files={config_file}", f"--params_file={params_file}",
            "--max_evals=1", f"--output_file={out}"]
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"] + argv)
    with pytest.raises(SystemExit) as exc:
        run_hyper.cli()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {params_file}:3: ")
    assert expected in err
    assert not out.exists()  # stopped before the first trial


def test_searched_option_also_on_the_command_line_is_refused(tmp_path, tiny_files, monkeypatch, capsys):
    config_file, params_file = tiny_files
    argv = ["--dataset=tiny", f"--config_files={config_file}", f"--params_file={params_file}",
            "--learning_rate=0.01"]
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"] + argv)
    with pytest.raises(SystemExit):
        run_hyper.cli()
    err = capsys.readouterr().err
    assert f"{params_file}:2: learning_rate is searched here and also set on the command line" in err


def test_exhaustive_needs_choice_lines(tmp_path, tiny_files):
    config_file, params_file = tiny_files
    with pytest.raises(hyper.ParamsFileError, match=r"tiny\.hyper:2: algo exhaustive .* loguniform"):
        hyper.search("PRISM_SASRec", "tiny", params_file, config_file_list=[config_file],
                     algo="exhaustive")


def test_bundled_space_file_is_valid_and_documented():
    path = os.path.join(REPO, "configs", "hyper", "prism.hyper")
    params = hyper.read_params_file(path)
    assert {"learning_rate", "hidden_size", "prism_expert_hidden", "prism_gate_dropout",
            "prism_temperature", "prism_lambda_uni", "prism_lambda_syn", "prism_lambda_red"} <= set(params)
    hyper.check_params(params, "PRISM_SASRec", "ml-100k-mm",
                       [os.path.join(REPO, "configs", "ml-100k-mm.yaml")])
    with open(os.path.join(REPO, "configs", "hyper", "README.md")) as f:
        readme = f.read()
    with open(path) as f:
        for line in f.read().splitlines():
            assert f"| `{line}` |" in readme, f"configs/hyper/README.md does not document {line!r}"


def test_hyperopt_imports_without_pkg_resources(tmp_path):
    """In a fresh interpreter where ``import pkg_resources`` fails (setuptools >= 82), hyperopt
    still imports, the stand-in serves hyperopt.atpe's model files and is gone afterwards."""
    code = (
        "import sys\n"
        "sys.modules['pkg_resources'] = None\n"  # import pkg_resources -> ImportError
        "from prism_recbole.hyper import import_hyperopt\n"
        "h = import_hyperopt()\n"
        "import hyperopt.atpe as atpe\n"
        "assert 'pkg_resources' not in sys.modules, 'stand-in left behind'\n"
        "pr = getattr(atpe, 'pkg_resources', None)\n"
        "if pr is not None:\n"
        "    data = pr.resource_string(atpe.__name__, 'atpe_models/scaling_model.json')\n"
        "    assert data.startswith(b'{'), data[:20]\n"
        "assert 'ray' not in sys.modules\n"
        "print('ok', h.__version__)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok ")


def test_stand_in_resource_string_reads_module_relative_files():
    stand_in = hyper._pkg_resources_stand_in()
    data = stand_in.resource_string("prism_recbole.hyper", "properties/prism.yaml")
    assert b"prism_temperature" in data


def test_two_trials_on_the_bundled_dataset_cut_short(tmp_path, monkeypatch, capsys):
    """The real ml-100k-mm files, cut to the first 5,000 interactions by time (55 users), small
    model, one epoch: the bundled config and the bundled space file's kinds of lines."""
    params_file = _write(tmp_path / "bundled.hyper",
                         "prism_temperature uniform 0.3,1.5\nprism_lambda_syn loguniform -4.61,0.0\n")
    out = tmp_path / "bundled.txt"
    argv = ["--model=PRISM_SASRec", "--dataset=ml-100k-mm", f"--params_file={params_file}",
            "--max_evals=2", f"--output_file={out}", "--epochs=1",
            "--val_interval={'timestamp':'[874724710,875320312)'}", "--modality_cache=False",
            "--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16", "--inner_size=32", "--n_layers=1",
            "--prism_expert_hidden=16", "--train_batch_size=512", "--show_progress=False",
            "--state=ERROR", f"--checkpoint_dir={tmp_path / 'saved'}"]
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"] + argv)
    result = run_hyper.main(argv)
    assert len(result.trials) == 2 and result.trials[0].params != result.trials[1].params
    assert result.best_params in [t.params for t in result.trials]
    assert out.read_text().count("Valid result:") == 2
    assert "ndcg@10" in result.best_result["best_valid_result"]
    assert "ray" not in sys.modules
