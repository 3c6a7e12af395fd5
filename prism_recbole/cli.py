"""The command lines' shared error handling (run_recbole.py, run_comparison.py, run_hyper.py,
run_fusion_report.py, run_group_report.py, run_recommend.py).

Bad input (an unknown model or option, a malformed atomic file, a bad vector, an unsafe or
missing checkpoint, unknown tokens, a bad params-file line ...) ends in one ``error:`` line on
stderr and exit code 2, instead of a traceback.  Set PRISM_RECBOLE_TRACEBACK=1 to see the
traceback instead.
"""
import os
import sys


def run_cli(main, *args):
    """Call ``main(*args)``; turn the expected bad-input errors into one line and exit code 2."""
    if os.environ.get("PRISM_RECBOLE_TRACEBACK") == "1":
        return main(*args)
    from prism_recbole.data import AtomicFileError
    from prism_recbole.trainer import UnsafeCheckpointError

    try:
        return main(*args)
    except (AtomicFileError, UnsafeCheckpointError, ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}\n(set PRISM_RECBOLE_TRACEBACK=1 to see where)", file=sys.stderr)
        sys.exit(2)


def recbole_argv(argv, own_flags):
    """``sys.argv`` for RecBole's Config, which reads every ``--key=value`` there: the program
    name and the ``--key=value`` items that are not the command's own flags."""
    return [sys.argv[0]] + [a for a in argv
                            if a.startswith("--") and "=" in a and a.split("=")[0] not in own_flags]


def config_overrides(parser, extra):
    """``--key=value`` arguments after a command's known ones (``parse_known_args``): options
    overriding a checkpoint's stored config, values read as YAML."""
    import yaml

    options = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognized argument {item!r} (options are given as --key=value)")
        key, value = item[2:].split("=", 1)
        options[key] = yaml.safe_load(value) if value else ""
    return options
