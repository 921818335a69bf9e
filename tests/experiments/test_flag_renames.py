"""One name per concept: the CCP flags named like the library arguments, old spellings kept.

``--ccp_lambda_0`` / ``--ccp_min_epochs_per_instance`` / ``--ccp_monitor`` are
``AlternatingProjection(lambda_0=, min_epochs_per_instance=, monitor=)``; the old spellings
(``--ccp_lambda``, ``--ccp_min_iterations``, ``--ccp_monitor_metric``) still parse on the command
line and in flagfiles, in ``replace``, and a run folder stored with them resumes.
"""
import inspect
import os

import ccp
from experiments import config as config_lib
from experiments import flags as flags_lib
from experiments import run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(ROOT, "experiments", "configs", "digits.cfg")


def test_new_flags_are_the_library_argument_names():
    arguments = inspect.signature(ccp.projection.AlternatingProjection).parameters
    fields = {name for name, group, _ in config_lib.flag_fields() if group == "ccp"}
    for old, new in config_lib.RENAMED_FLAGS.items():
        assert new in fields and old not in fields
        assert new[len("ccp_"):] in arguments


def test_old_spellings_still_parse_and_mean_the_same():
    old = flags_lib.parse_flagfile(DIGITS, extra=[
        "--ccp", "--ccp_lambda=3e-4", "--ccp_min_iterations=2", "--ccp_monitor_metric=loss"])
    new = flags_lib.parse_flagfile(DIGITS, extra=[
        "--ccp", "--ccp_lambda_0=3e-4", "--ccp_min_epochs_per_instance=2", "--ccp_monitor=loss"])
    assert old == new
    assert (new.ccp.lambda_0, new.ccp.min_epochs_per_instance, new.ccp.monitor) == (3e-4, 2,
                                                                                   "loss")
    assert new.replace(ccp_monitor_metric="precision_at_1").ccp.monitor == "precision_at_1"


def test_a_run_stored_with_the_old_spellings_resumes(tmp_path):
    config = flags_lib.parse_flagfile(DIGITS, extra=["--ccp", "--ccp_lambda_0=3e-4"])
    stored = config.to_dict()
    group = stored["ccp"]
    for old, new in config_lib.RENAMED_FLAGS.items():
        group[old] = group.pop(new)
    run_folder.store_config(stored, str(tmp_path))
    assert run_folder.check_config(config.to_dict(), str(tmp_path),
                                   config_lib.ExperimentConfig().to_dict()) == []
