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


def read_value(text):
    """One option value as YAML reads it (``true`` -> True, ``[a, b]`` -> list), and a number
    that YAML 1.1 leaves a string (``1e-3``) as the number."""
    import yaml

    value = yaml.safe_load(text) if text else ""
    if isinstance(value, str) and value:
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def config_overrides(parser, extra):
    """``--key=value`` arguments after a command's known ones (``parse_known_args``): options
    overriding a checkpoint's stored config, values read by :func:`read_value`."""
    options = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognized argument {item!r} (options are given as --key=value)")
        key, value = item[2:].split("=", 1)
        options[key] = read_value(value)
    return options


def shared_options(argv, own_flags):
    """The ``--key=value`` items of ``argv`` that are not the command's own flags, as a dict
    (values by :func:`read_value`).  Commands that run several variants pass these to RecBole
    as ``config_dict`` under each variant's own options, not on ``sys.argv``: RecBole gives
    command-line options priority over ``config_dict``, so a shared option there would
    silently override a variant's own value of it."""
    return dict((key, read_value(value)) for key, value in
                (item[2:].split("=", 1) for item in recbole_argv(argv, own_flags)[1:]))
