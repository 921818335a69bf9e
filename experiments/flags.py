"""absl flags generated from :class:`experiments.config.ExperimentConfig` (one schema)."""
import dataclasses

from absl import flags

from experiments import config as config_lib


def define_flags(flag_values=flags.FLAGS):
    """Defines one absl flag per ExperimentConfig field (same name, default, help)."""
    for field in dataclasses.fields(config_lib.ExperimentConfig):
        name, default, help_text = field.name, field.default, field.metadata["help"]
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


def config_from_flags(flag_values=flags.FLAGS):
    """Builds and validates an ExperimentConfig from parsed flags."""
    values = {}
    for field in dataclasses.fields(config_lib.ExperimentConfig):
        value = flag_values[field.name].value
        if isinstance(field.default, tuple):
            try:
                value = tuple(int(v) for v in value)
            except ValueError as error:
                raise config_lib.ConfigError(
                    f"--{field.name} expects comma-separated integers, got {value}"
                ) from error
        values[field.name] = value
    return config_lib.validate(config_lib.ExperimentConfig(**values))


def parse_flagfile(path):
    """Parses a flagfile into a validated ExperimentConfig without touching global FLAGS."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values([__file__, f"--flagfile={path}"])
    return config_from_flags(flag_values)
