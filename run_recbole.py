"""Train and evaluate a model through RecBole: PRISM models and any RecBole model by name.

    python run_recbole.py                                   # PRISM_SASRec on ml-100k-mm
    python run_recbole.py --model=SASRec                    # RecBole's SASRec, same data/config
    python run_recbole.py --model=PRISM_SASRec --dataset=NAME --config_files="a.yaml b.yaml"
    python run_recbole.py --epochs=5 --prism_temperature=1.0    # any option as --key=value
    python run_recbole.py --model=PRISM_SASRec --nproc=2      # 2 processes (DDP), as RecBole's

Without --config_files, configs/<dataset>.yaml is used when it exists.

Distributed data parallel (RecBole's flags): --nproc=N processes on this machine, one GPU each
(nccl; the first N GPUs unless --gpu_id is given), or on the CPU with gloo where there is no
GPU (or --ddp_backend=gloo).  Several machines: the same command on each, with --world_size
(all processes), --ip/--port of the machine that has rank 0, and --group_offset (the rank of
this machine's first process: 0 there, then the number of processes started before).
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
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (default: %(default)s)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of the rank-0 machine (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5678, help="its port (default: %(default)s)")
    parser.add_argument("--group_offset", type=int, default=0, help="rank of this machine's first process (default: %(default)s)")
    args, _ = parser.parse_known_args(argv)

    from prism_recbole.quick_start import run

    config_files = args.config_files.split() if args.config_files else default_config_files(args.dataset)
    result = run(model=args.model, dataset=args.dataset, config_file_list=config_files,
                 nproc=args.nproc, world_size=args.world_size, ip=args.ip, port=args.port,
                 group_offset=args.group_offset)

    print()
    print(f"{result['model']} on {result['dataset']}")
    print("best valid: " + ", ".join(f"{k}={v:.4f}" for k, v in result["best_valid_result"].items()))
    print("test:       " + ", ".join(f"{k}={v:.4f}" for k, v in result["test_result"].items()))
    print(f"log:        {result['log_file']}")
    print(f"checkpoint: {result['checkpoint']}")
    if "world_size" in result:
        print(f"processes:  {result['world_size']} ({result['ddp_backend']})")
    return result


def cli():
    """``main()`` for the command line: bad input (unknown model or option, a malformed atomic
    file, an unsafe checkpoint ...) ends in one ``error:`` line and exit code 2.  Set
    PRISM_RECBOLE_TRACEBACK=1 to see the traceback instead."""
    from prism_recbole.cli import run_cli

    return run_cli(main)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
