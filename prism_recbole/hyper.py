"""Hyper-parameter search with RecBole's own ``HyperTuning`` (hyperopt), without ray.

RecBole 1.2.1 searches hyper-parameters with :class:`recbole.trainer.HyperTuning`, which asks
hyperopt for parameter sets and calls an *objective function* once per set.  RecBole's own
objective function lives in ``recbole.quick_start``, which imports ray (it does not import on
today's numpy and setuptools); this module supplies the objective instead: each trial is one
:func:`prism_recbole.quick_start.run` with the trial's parameters on top of the fixed options,
and returns the dict that ``HyperTuning`` expects (``model``, ``best_valid_score``,
``valid_score_bigger``, ``best_valid_result``, ``test_result``).  Trials are ranked on the
validation metric (``valid_metric``) only; each trial's test result is recorded, as RecBole
does, but plays no part in the choice.

Parameter-space files (``.hyper``) are RecBole's format, read by RecBole's own parser
(``HyperTuning._build_space_from_file``), one parameter a line::

    learning_rate loguniform -9.21,-4.61
    hidden_size choice [64,128,256]
    prism_temperature uniform 0.3,1.5
    prism_expert_hidden quniform 64,256,64

* ``choice [v1,v2,...]``: one of the listed Python literals (RecBole ``eval``\\ s the list);
* ``uniform low,high``: a float drawn uniformly in [low, high];
* ``quniform low,high,q``: ``round(uniform(low, high) / q) * q``; hyperopt returns a float, so
  this module hands an ``int`` to the model when low, high and q are all whole numbers;
* ``loguniform low,high``: ``exp(uniform(low, high))``, so **low and high are natural
  logarithms**: ``loguniform -9.21,-4.61`` is 1e-4 .. 1e-2.

RecBole's parser splits each line on single spaces, joins everything after the second field,
and has no comments: a line ``# comment with words`` is read as a parameter named ``#`` and
fails, two spaces in a row make an empty field, and a line of fewer than three fields is
silently skipped.  :func:`read_params_file` therefore checks the whole file first, with the
same splitting, and reports the first problem as ``<file>:<line>: ...``; it also rejects a
parameter that the model does not have (a typo would otherwise run every trial with the
defaults).  The documentation of ``configs/hyper/prism.hyper`` lives next to it, in
``configs/hyper/README.md``, for that reason.

hyperopt 0.2.7 (the release RecBole 1.2.1 was written against) imports ``pkg_resources`` at
import time (``hyperopt/atpe.py``), and setuptools >= 82 no longer ships it.  hyperopt uses it
for one thing only: ``pkg_resources.resource_string(__name__, "atpe_models/...")`` to read the
model files of the ATPE optimizer (``algo=atpe.suggest``, which RecBole never uses).
:func:`import_hyperopt` provides a stand-in module with just that function (implemented with
``importlib.resources``), only while hyperopt is imported and only when ``pkg_resources`` cannot
be found; it removes the stand-in from ``sys.modules`` afterwards, so no other library ever sees
it (``hyperopt.atpe`` keeps its own reference).  hyperopt >= 0.3 uses ``importlib.resources``
itself and needs no stand-in.  Nothing in site-packages is edited.
"""
import ast
import functools
import importlib.util
import math
import numbers
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from recbole.trainer.hyper_tuning import HyperTuning

PARAM_KINDS = ("choice", "uniform", "quniform", "loguniform")
ALGOS = ("bayes", "random", "exhaustive")
RECBOLE_RESULT_KEYS = ("model", "best_valid_score", "valid_score_bigger", "best_valid_result",
                       "test_result")


# --------------------------------------------------------------------------------------------
# hyperopt without pkg_resources


def _pkg_resources_stand_in():
    """A module with the one ``pkg_resources`` function that hyperopt 0.2.7 calls."""
    import importlib

    module = types.ModuleType("pkg_resources")
    module.__doc__ = "prism_recbole.hyper's stand-in: resource_string only (for hyperopt.atpe)."

    def resource_string(module_name, resource_name):
        """The bytes of ``resource_name`` ('/'-separated), relative to the folder of the
        module ``module_name``, as ``pkg_resources.resource_string`` reads a plain file."""
        if not isinstance(module_name, str):
            module_name = module_name.__name__
        owner = sys.modules.get(module_name) or importlib.import_module(module_name)
        path = os.path.join(os.path.dirname(owner.__file__), *resource_name.split("/"))
        with open(path, "rb") as fp:
            return fp.read()

    module.resource_string = resource_string
    module._prism_recbole_stand_in = True
    return module


def import_hyperopt():
    """``import hyperopt``, on a setuptools with or without ``pkg_resources``; returns it."""
    if "hyperopt" in sys.modules:
        return sys.modules["hyperopt"]
    try:
        missing = importlib.util.find_spec("pkg_resources") is None
    except (ImportError, ValueError):
        missing = True
    if not missing:
        import hyperopt

        return hyperopt
    stand_in = _pkg_resources_stand_in()
    sys.modules["pkg_resources"] = stand_in
    try:
        import hyperopt
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]
    return hyperopt


# --------------------------------------------------------------------------------------------
# parameter-space files


class ParamsFileError(ValueError):
    """A line of a ``.hyper`` file that RecBole's parser would reject or misread."""


@dataclass
class SearchParam:
    """One line of a ``.hyper`` file, as RecBole's parser reads it."""
    name: str
    kind: str
    values: object          # list for choice; (low, high) or (low, high, q) floats otherwise
    path: str
    lineno: int

    @property
    def where(self):
        return f"{self.path}:{self.lineno}"

    @property
    def is_integer(self):
        """A quniform range of whole numbers: its values go to the model as ``int``."""
        return self.kind == "quniform" and all(float(v).is_integer() for v in self.values)

    def describe(self):
        if self.kind == "choice":
            return f"one of {self.values}"
        if self.kind == "loguniform":
            low, high = self.values
            return f"log-uniform in [{math.exp(low):.3g}, {math.exp(high):.3g}]"
        if self.kind == "quniform":
            low, high, q = self.values
            return f"uniform in [{low:g}, {high:g}] in steps of {q:g}"
        return f"uniform in [{self.values[0]:g}, {self.values[1]:g}]"


def _floats(text, count, fmt, fail):
    parts = text.split(",")
    if len(parts) != count:
        fail(f"expected {fmt} (comma-separated numbers), got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        fail(f"expected {fmt} (comma-separated numbers), got {text!r}")
    if not all(math.isfinite(v) for v in values):
        fail(f"expected finite numbers, got {text!r}")
    return values


def read_params_file(path):
    """Check a ``.hyper`` file line by line; returns ``{name: SearchParam}`` in file order.

    Raises:
        FileNotFoundError: no such file.
        ParamsFileError: the first bad line, as ``<path>:<line>: <what is wrong>``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"params file {path} does not exist")
    params = {}
    with open(path, "r") as fp:
        lines = fp.read().splitlines()
    for lineno, line in enumerate(lines, 1):

        def fail(message):
            raise ParamsFileError(f"{path}:{lineno}: {message}: {line.strip()!r}")

        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            fail("RecBole's .hyper format has no comments (its parser would read '#' as a "
                 "parameter name); put notes in a README next to the file")
        if "\t" in text:
            fail("use single spaces between the fields, not tabs (RecBole splits on ' ')")
        fields = text.split(" ")
        if "" in fields[:2]:
            fail("use single spaces between the fields (RecBole splits on ' ', so two spaces "
                 "make an empty field)")
        if len(fields) < 3:
            fail("expected 'name kind values' (RecBole would silently skip this line)")
        name, kind, value = fields[0], fields[1], "".join(fields[2:])
        if not name.isidentifier():
            fail(f"{name!r} is not an option name")
        if kind not in PARAM_KINDS:
            fail(f"unknown kind {kind!r}, expected one of {', '.join(PARAM_KINDS)}")
        if name in params:
            fail(f"{name} is already searched on line {params[name].lineno}")
        if kind == "choice":
            try:
                values = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                fail(f"choice needs a Python list of literals like [0.1,0.2], got {value!r}")
            if not isinstance(values, list) or not values:
                fail(f"choice needs a non-empty list like [0.1,0.2], got {value!r}")
        elif kind == "quniform":
            values = _floats(value, 3, "low,high,q", fail)
            if not values[0] <= values[1] or values[2] <= 0:
                fail("quniform needs low <= high and q > 0")
        else:
            values = _floats(value, 2, "low,high", fail)
            if not values[0] < values[1]:
                fail(f"{kind} needs low < high")
            if kind == "loguniform" and (values[1] > 20 or 0 <= values[0] < values[1] <= 1):
                fail(f"loguniform takes natural logarithms: {value} draws from "
                     f"{math.exp(values[0]):.3g} to {math.exp(values[1]):.3g} "
                     "(for 1e-4 .. 1e-2 write -9.21,-4.61)")
        params[name] = SearchParam(name, kind, values, path, lineno)
    if not params:
        raise ParamsFileError(f"{path}: no parameters to search")
    return params


def command_line_options(argv=None):
    """The option names RecBole's ``Config`` reads from ``--key=value`` items of ``argv``."""
    argv = sys.argv[1:] if argv is None else argv
    names = []
    for arg in argv:
        if arg.startswith("--") and len(arg[2:].split("=")) == 2:
            names.append(arg[2:].split("=")[0])
    return names


def check_params(params, model, dataset, config_file_list=None, config_dict=None):
    """Every searched name must be an option of the model, and none may also be set with
    ``--key=value`` on the command line (RecBole's Config lets the command line override the
    trial's value, so every trial would run with the same one)."""
    from prism_recbole.config import Config

    argv_names = set(command_line_options())
    for p in params.values():
        if p.name in argv_names:
            raise ParamsFileError(
                f"{p.where}: {p.name} is searched here and also set on the command line "
                f"(--{p.name}=...), which would override it in every trial; drop one of them")
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=dict(config_dict or {}))
    known = config.final_config_dict
    for p in params.values():
        if p.name not in known:
            raise ParamsFileError(
                f"{p.where}: {p.name} is not an option of {config['model']} (a typo? an option "
                f"that no property file defines must first be set in a config file)")
    return config


# --------------------------------------------------------------------------------------------
# the objective


def _plain(value):
    """numpy scalars from hyperopt -> Python numbers (readable, and checkpoint-safe)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def format_params(params):
    parts = []
    for name, value in params.items():
        value = _plain(value)
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def recbole_result(result):
    """The keys of a :func:`prism_recbole.quick_start.run` result that RecBole's HyperTuning
    reads, plus the checkpoint and log file."""
    out = {key: result[key] for key in RECBOLE_RESULT_KEYS}
    out["checkpoint"] = result.get("checkpoint")
    out["log_file"] = result.get("log_file")
    return out


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """Drop-in for RecBole's ``recbole.quick_start.objective_function`` (same signature, same
    returned keys), without ray: ``model`` and ``dataset`` come from the config dict or files."""
    from prism_recbole.quick_start import run

    return recbole_result(run(config_dict=config_dict, config_file_list=config_file_list,
                              saved=saved))


@dataclass
class Trial:
    index: int
    params: Dict
    params_str: str
    result: Optional[dict] = None


class Objective:
    """The objective handed to ``HyperTuning``: one :func:`~prism_recbole.quick_start.run` per
    call, with ``model``, ``dataset`` and the fixed ``config_dict`` of the search and the
    trial's parameters on top (the trial wins).  Prints ``trial i/N`` and the parameters;
    keeps a :class:`Trial` per call in ``self.trials``.  Each trial's checkpoint is renamed to
    ``<name>-trial<i>.pth`` so that two trials finishing in the same second do not share one.
    """

    def __init__(self, model, dataset, config_dict=None, int_params=(), total=None, echo=print):
        self.model = model
        self.dataset = dataset
        self.config_dict = dict(config_dict or {})
        self.int_params = set(int_params)
        self.total = total
        self.echo = echo
        self.trials: List[Trial] = []

    def __call__(self, config_dict, config_file_list=None):
        from prism_recbole.quick_start import run

        params = {}
        for name, value in config_dict.items():
            value = _plain(value)
            if name in self.int_params and isinstance(value, float):
                value = int(round(value))
            params[name] = value
        trial = Trial(len(self.trials) + 1, params, HyperTuning.params2str(config_dict))
        self.trials.append(trial)
        total = f"/{self.total}" if self.total else ""
        self.echo(f"\n=== trial {trial.index}{total}: {format_params(params)} ===", flush=True)
        options = dict(self.config_dict)
        options.update(params)
        try:
            result = recbole_result(run(model=self.model, dataset=self.dataset,
                                        config_file_list=config_file_list, config_dict=options,
                                        saved=True))
        except Exception as err:
            self.echo(f"trial {trial.index}{total} failed ({format_params(params)}): "
                      f"{type(err).__name__}: {err}", flush=True)
            raise
        checkpoint = result.get("checkpoint")
        if checkpoint and os.path.isfile(checkpoint):
            stem, ext = os.path.splitext(checkpoint)
            unique = f"{stem}-trial{trial.index}{ext}"
            os.replace(checkpoint, unique)
            result["checkpoint"] = unique
        trial.result = result
        self.echo(f"trial {trial.index}{total}: valid score {result['best_valid_score']:.4f}",
                  flush=True)
        return result


# --------------------------------------------------------------------------------------------
# exhaustive search


def exhaustive_search(new_ids, domain, trials, seed, nbMaxSucessiveFailures=1000):
    """RecBole's ``recbole.trainer.hyper_tuning.exhaustive_search`` (grid points in random
    order, no repeats), with one fix: RecBole draws with ``np.random.RandomState(seed)``, but
    hyperopt >= 0.2.7 samples with ``rng.integers`` (``numpy.random.Generator``), so RecBole's
    ``algo="exhaustive"`` fails on its first trial with "'RandomState' object has no attribute
    'integers'" (RecBole issue #1868, open).  Here the generator is
    ``np.random.default_rng(seed)``."""
    import numpy as np
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    def key(vals):
        return hash(frozenset((k, v[0]) if len(v) > 0 else (k, None) for k, v in vals.items()))

    seen = {key(trial["misc"]["vals"]) for trial in trials.trials}
    rng = np.random.default_rng(seed)
    rval = []
    for new_id in new_ids:
        failures = 0
        while True:
            idxs, vals = pyll.rec_eval(domain.s_idxs_vals,
                                       memo={domain.s_new_ids: [new_id], domain.s_rng: rng})
            if key(vals) not in seen:
                break
            failures += 1
            if failures > nbMaxSucessiveFailures:
                return rval  # the grid is exhausted
        seen.add(key(vals))
        new_result = domain.new_result()
        new_misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([new_misc], idxs, vals)
        rval.extend(trials.new_trial_docs([new_id], [None], [new_result], [new_misc]))
    return rval


# --------------------------------------------------------------------------------------------
# the search


class PrismHyperTuning(HyperTuning):
    """RecBole's ``HyperTuning`` (its parser, trial bookkeeping, best-score logic and
    ``export_result``), with ``run()`` calling ``fmin`` without hyperopt's progress bar: the bar
    redirects stdout through tqdm and garbles every trial's log; :class:`Objective` prints
    ``trial i/N`` instead."""

    def run(self):
        from hyperopt import fmin

        fmin(self.trial, self.space, algo=self.algo, max_evals=self.max_evals,
             early_stop_fn=self.early_stop_fn, show_progressbar=False)
        if self.display_file is not None:
            self.plot_hyper()


@dataclass
class SearchResult:
    best_params: Dict
    best_result: dict
    best_trial: Trial
    trials: List[Trial]
    max_evals: int
    output_file: Optional[str]
    tuner: object = field(repr=False, default=None)

    @property
    def stopped_early(self):
        return len(self.trials) < self.max_evals


def _find_best_trial(trials, tuner):
    best_str = tuner.params2str(tuner.best_params)
    for trial in trials:
        if trial.result is not None and trial.params_str == best_str \
                and trial.result["best_valid_score"] == tuner.best_score:
            return trial
    return None


def search(model, dataset, params_file, config_file_list=None, config_dict=None, algo="bayes",
           max_evals=20, early_stop=10, output_file=None, search_seed=2020,
           keep_checkpoints="best", echo=print):
    """Search ``params_file``'s space with RecBole's ``HyperTuning``; returns a
    :class:`SearchResult`.

    Args:
        model, dataset, config_file_list: as for :func:`prism_recbole.quick_start.run`.
        config_dict: fixed options for every trial (a trial's own parameters override them).
        params_file: a RecBole ``.hyper`` file (see the module docstring).
        algo: ``bayes`` (hyperopt's TPE; its first 20 trials are random), ``random``, or
            ``exhaustive`` (RecBole's grid search without repeats; ``choice`` lines only).
        max_evals: the number of trials (for ``exhaustive``: at most this many grid points).
        early_stop: stop after this many trials without a better valid score (RecBole's
            ``no_progress_loss``).
        output_file: RecBole's ``export_result`` file (every trial's parameters, valid and
            test results); written even when a trial fails or the search is interrupted.
        search_seed: seeds hyperopt's sampler (``HYPEROPT_FMIN_SEED``); None: not seeded.
        keep_checkpoints: ``best`` keeps the best trial's checkpoint only, ``all`` keeps every
            trial's.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {', '.join(ALGOS)}, got {algo!r}")
    if keep_checkpoints not in ("best", "all"):
        raise ValueError(f"keep_checkpoints must be 'best' or 'all', got {keep_checkpoints!r}")
    if int(max_evals) < 1:
        raise ValueError(f"max_evals must be at least 1, got {max_evals}")
    params = read_params_file(params_file)
    if algo == "exhaustive":
        for p in params.values():
            if p.kind != "choice":
                raise ParamsFileError(
                    f"{p.where}: algo exhaustive searches a grid of 'choice' lines only, this "
                    f"line is {p.kind}; use algo bayes or random")
    check_params(params, model, dataset, config_file_list, config_dict)

    import_hyperopt()
    objective = Objective(model, dataset, config_dict,
                          int_params=[p.name for p in params.values() if p.is_integer], echo=echo)
    hyperopt_algo = algo
    if algo == "exhaustive":
        hyperopt_algo = functools.partial(exhaustive_search, nbMaxSucessiveFailures=1000)
    tuner = PrismHyperTuning(objective, params_file=params_file,
                             fixed_config_file_list=config_file_list, algo=hyperopt_algo,
                             max_evals=int(max_evals), early_stop=int(early_stop))
    if algo == "exhaustive":  # RecBole would run the whole grid; at most max_evals points
        grid = math.prod(len(p.values) for p in params.values())
        tuner.max_evals = int(min(grid, int(max_evals)))
    objective.total = tuner.max_evals
    echo(f"Searching {len(params)} parameters of {model} on {dataset} "
         f"({algo}, {tuner.max_evals} trials at most, early stop after {early_stop} trials "
         f"without improvement) from {params_file}:")
    for p in params.values():
        echo(f"  {p.name}: {p.describe()}")

    saved_seed = os.environ.get("HYPEROPT_FMIN_SEED")
    if search_seed is not None:
        os.environ["HYPEROPT_FMIN_SEED"] = str(int(search_seed))
    elif saved_seed is not None:
        del os.environ["HYPEROPT_FMIN_SEED"]
    try:
        tuner.run()
    finally:
        if saved_seed is None:
            os.environ.pop("HYPEROPT_FMIN_SEED", None)
        else:
            os.environ["HYPEROPT_FMIN_SEED"] = saved_seed
        done = [t for t in objective.trials if t.result is not None]
        if output_file and done:
            os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
            tuner.export_result(output_file=output_file)
            echo(f"Wrote the results of {len(done)} trial(s) to {output_file}", flush=True)
        best_trial = _find_best_trial(done, tuner) if tuner.best_params is not None else None
        if keep_checkpoints == "best":
            for trial in done:
                path = trial.result.get("checkpoint")
                if trial is not best_trial and path and os.path.isfile(path):
                    os.remove(path)
                    trial.result["checkpoint"] = None

    return SearchResult(
        best_params=dict(best_trial.params),
        best_result=best_trial.result,
        best_trial=best_trial,
        trials=done,
        max_evals=int(tuner.max_evals),
        output_file=output_file,
        tuner=tuner,
    )
