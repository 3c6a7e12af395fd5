"""Train and evaluate a model through RecBole: PRISM models and any RecBole model by name.

    python run_recbole.py                                   # PRISM_SASRec on ml-100k-mm
    python run_recbole.py --model=SASRec                    # RecBole's SASRec, same data/config
    python run_recbole.py --model=PRISM_SASRec --dataset=NAME --config_files="a.yaml b.yaml"
    python run_recbole.py --epochs=5 --prism_temperature=1.0    # any option as --key=value

Without --config_files, configs/<dataset>.yaml is used when it exists.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "PRISM_SASRec"
DEFAULT_DATASET = "ml-100k-mm"


def default_config_files(dataset):
    path = os.path.join(HERE, "configs", f"{dataset}.yaml")
    return [path] if os.path.isfile(path) else []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET, help="dataset name (default: %(default)s)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML config files")
    args, _ = parser.parse_known_args(argv)

    from prism_recbole.quick_start import run

    config_files = args.config_files.split() if args.config_files else default_config_files(args.dataset)
    result = run(model=args.model, dataset=args.dataset, config_file_list=config_files)

    print()
    print(f"{result['model']} on {result['dataset']}")
    print("best valid: " + ", ".join(f"{k}={v:.4f}" for k, v in result["best_valid_result"].items()))
    print("test:       " + ", ".join(f"{k}={v:.4f}" for k, v in result["test_result"].items()))
    print(f"log:        {result['log_file']}")
    print(f"checkpoint: {result['checkpoint']}")
    return result


def cli():
    """``main()`` for the command line: bad input (unknown model or option, a malformed atomic
    file, an unsafe checkpoint ...) ends in one ``error:`` line and exit code 2.  Set
    PRISM_RECBOLE_TRACEBACK=1 to see the traceback instead."""
    if os.environ.get("PRISM_RECBOLE_TRACEBACK") == "1":
        return main()
    from prism_recbole.data import AtomicFileError
    from prism_recbole.trainer import UnsafeCheckpointError

    try:
        return main()
    except (AtomicFileError, UnsafeCheckpointError, ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}\n(set PRISM_RECBOLE_TRACEBACK=1 to see where)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
