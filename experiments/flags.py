"""absl flags generated from :mod:`experiments.config` (one schema), and flagfile lookup."""
import os

from absl import flags

from experiments import config as config_lib

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def define_flags(flag_values=flags.FLAGS):
    """Defines one absl flag per config field (same name, default, help, choices)."""
    for name, _, field in config_lib.flag_fields():
        default, help_text = field.default, field.metadata["help"]
        choices = field.metadata.get("choices")
        if choices is not None:
            flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    for old, new in config_lib.RENAMED_FLAGS.items():  # the old spellings keep working
        flags.DEFINE_alias(old, new, flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS):
    """Builds and validates an ExperimentConfig from parsed flags."""
    values = {}
    for name, _, field in config_lib.flag_fields():
        value = flag_values[name].value
        if isinstance(field.default, tuple):
            try:
                value = tuple(int(v) for v in value)
            except ValueError as error:
                raise config_lib.ConfigError(
                    f"--{name} expects comma-separated integers, got {value}") from error
        values[name] = value
    return config_lib.validate(config_lib.ExperimentConfig.from_flags(values))


def resolve_flagfile(path, configs_dir=CONFIGS_DIR):
    """``path`` if it exists, else ``configs_dir/path`` when that exists (``--flagfile=cub.cfg``).

    Returns ``path`` unchanged when neither exists (absl then reports the missing file).
    """
    if os.path.exists(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(configs_dir, path)
    return candidate if os.path.exists(candidate) else path


def resolve_flagfile_args(argv, configs_dir=CONFIGS_DIR):
    """argv with each ``--flagfile=NAME`` resolved by :func:`resolve_flagfile`."""
    resolved = []
    for arg in argv:
        for prefix in ("--flagfile=", "-flagfile="):
            if arg.startswith(prefix):
                arg = prefix + resolve_flagfile(arg[len(prefix):], configs_dir)
        resolved.append(arg)
    return resolved


def parse_flagfile(path, extra=()):
    """Parses a flagfile (and extra flags) into a validated ExperimentConfig; global FLAGS stay
    untouched."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values([__file__, f"--flagfile={resolve_flagfile(path)}", *extra])
    return config_from_flags(flag_values)
