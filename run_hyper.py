"""Hyper-parameter search with RecBole's HyperTuning (hyperopt), without ray.

    python run_hyper.py                                     # PRISM_SASRec on ml-100k-mm, 20 trials
    python run_hyper.py --model=PRISM_SASRec --dataset=ml-100k-mm \\
        --params_file=configs/hyper/prism.hyper --max_evals=20 \\
        --output_file=results/hyper-PRISM_SASRec.txt --epochs=3
    python run_hyper.py --algo=exhaustive --params_file=grid.hyper   # 'choice' lines only

Each trial trains and evaluates one model (prism_recbole.quick_start.run) with the trial's
parameters on top of the config files and of every --key=value given here (e.g. --epochs=3),
which apply to all trials.  Trials are ranked on the validation metric (valid_metric) only.
Prints each trial's parameters and score, then the best parameters; writes RecBole's
export_result file (every trial's parameters, valid and test results) to --output_file, also
when a trial fails or the search is interrupted.  The parameter-space format and the ranges of
configs/hyper/prism.hyper are documented in configs/hyper/README.md.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARAMS_FILE = os.path.join("configs", "hyper", "prism.hyper")
OWN_FLAGS = {"--model", "--dataset", "--config_files", "--params_file", "--algo", "--max_evals",
             "--early_stop", "--output_file", "--search_seed", "--keep_checkpoints"}


def default_config_files(dataset):
    path = os.path.join(HERE, "configs", f"{dataset}.yaml")
    return [path] if os.path.isfile(path) else []


def _fmt_metrics(metrics):
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="PRISM_SASRec", help="model name (default: %(default)s)")
    parser.add_argument("--dataset", default="ml-100k-mm", help="dataset name (default: %(default)s)")
    parser.add_argument("--config_files", default=None,
                        help="space-separated YAML files (default: configs/<dataset>.yaml)")
    parser.add_argument("--params_file", default=None,
                        help=f"RecBole .hyper file (default: {DEFAULT_PARAMS_FILE})")
    parser.add_argument("--algo", default="bayes", choices=["bayes", "random", "exhaustive"],
                        help="bayes: hyperopt's TPE (its first 20 trials are random); random; "
                             "exhaustive: grid of 'choice' lines, in random order, no repeats "
                             "(default: %(default)s)")
    parser.add_argument("--max_evals", type=int, default=20, help="trials (default: %(default)s)")
    parser.add_argument("--early_stop", type=int, default=10,
                        help="stop after this many trials without a better valid score "
                             "(default: %(default)s, as RecBole's run_hyper.py)")
    parser.add_argument("--output_file", default=None,
                        help="RecBole's export_result file (default: results/hyper-<model>-<dataset>.txt)")
    parser.add_argument("--search_seed", type=int, default=2020,
                        help="seed of hyperopt's sampler (default: %(default)s); the models' "
                             "own seed is RecBole's --seed")
    parser.add_argument("--keep_checkpoints", default="best", choices=["best", "all"],
                        help="keep the best trial's checkpoint only, or every trial's "
                             "(default: %(default)s)")
    args, _ = parser.parse_known_args(argv)
    # our own flags are not RecBole options: RecBole's Config reads --key=value from sys.argv,
    # so keep only the other --key=value items there (they apply to every trial)
    items = argv if argv is not None else sys.argv[1:]
    from prism_recbole.cli import recbole_argv

    sys.argv = recbole_argv(items, OWN_FLAGS)

    from prism_recbole.hyper import format_params, search

    params_file = args.params_file or os.path.join(HERE, DEFAULT_PARAMS_FILE)
    config_files = args.config_files.split() if args.config_files else default_config_files(args.dataset)
    output_file = args.output_file or os.path.join("results", f"hyper-{args.model}-{args.dataset}.txt")
    result = search(args.model, args.dataset, params_file, config_file_list=config_files,
                    algo=args.algo, max_evals=args.max_evals, early_stop=args.early_stop,
                    output_file=output_file, search_seed=args.search_seed,
                    keep_checkpoints=args.keep_checkpoints)

    best = result.best_result
    print()
    if result.stopped_early:
        print(f"Stopped after {len(result.trials)} of {result.max_evals} trials "
              f"({args.early_stop} trials without a better valid score).")
    print(f"Best of {len(result.trials)} trials: trial {result.best_trial.index} "
          f"(valid score {best['best_valid_score']:.4f}, {best['model']} on {args.dataset})")
    print(f"best params: {format_params(result.best_params)}")
    print(f"best valid:  {_fmt_metrics(best['best_valid_result'])}")
    print(f"test:        {_fmt_metrics(best['test_result'])}  (of the best trial; not used to choose)")
    print(f"checkpoint:  {best.get('checkpoint')}")
    print(f"results:     {output_file}")
    return result


def cli():
    """``main()`` for the command line: bad input (a bad params file line, an unknown model or
    option, a malformed atomic file ...) ends in one ``error:`` line and exit code 2.  Set
    PRISM_RECBOLE_TRACEBACK=1 to see the traceback instead."""
    from prism_recbole.cli import run_cli

    return run_cli(main)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
