"""experiments/config.py, registry.py, flags.py: one schema, library defaults, no TensorFlow."""
import dataclasses
import inspect
import os
import subprocess
import sys

import pytest

from ccp import defaults as D
from experiments import config as config_lib
from experiments import flags as flags_lib
from experiments import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_config_modules_do_not_import_tensorflow():
    code = ("import sys; import ccp.defaults, experiments.config, experiments.flags, "
            "experiments.registry, experiments.run_folder; "
            "from experiments import config; config.validate(config.ExperimentConfig()); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_registry_matches_the_library_and_the_data_sets():
    import ccp
    import data_pipelines

    assert set(registry.DATASETS) == set(data_pipelines.LOADERS)
    assert set(registry.EMBEDDED_DATASETS) == set(data_pipelines.EMBEDDED)
    assert set(registry.LR_SCHEDULES) == set(ccp.training.LR_SCHEDULES)
    assert set(registry.DISTANCES) == set(ccp.losses.distances.REGISTRY)
    assert set(registry.MINERS) - {registry.NO_MINER} == set(ccp.losses.miners.REGISTRY)
    assert set(registry.BACKBONES) == set(ccp.models.embedding.BACKBONES)
    assert set(registry.DATA_SOURCES) == set(data_pipelines.DATA_SOURCES)
    assert set(registry.INPUT_PIPELINES) == set(data_pipelines.pipelines.INPUT_PIPELINES)
    assert set(registry.POOL_TRANSFORMS) == set(data_pipelines.pipelines.POOL_TRANSFORMS)
    flag_choices = {name: f.metadata.get("choices") for name, _, f in config_lib.flag_fields()}
    assert flag_choices["loss"] == tuple(registry.LOSSES)
    assert flag_choices["backbone"] == tuple(registry.BACKBONES)
    assert flag_choices["dataset"] == registry.DATASETS
    assert set(registry.PAIR_LOSSES) | set(registry.PROXY_LOSSES) == set(registry.LOSSES)


@pytest.mark.parametrize("name", sorted(registry.LOSSES))
def test_every_registered_loss_builds_and_has_a_title(name):
    from ccp.losses.base import MetricLoss

    spec = registry.LOSSES[name]
    loss = spec.build(config_lib.LossConfig(), 5, 8, 0)
    assert isinstance(loss, MetricLoss)
    title = registry.method_title(name, ccp=spec.kind == registry.PAIR)
    assert title.startswith(spec.title) and title.endswith("-CCP") == (spec.kind == registry.PAIR)


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_command_line_defaults_are_the_library_defaults():
    """One source of truth: config defaults, library constructor defaults and ccp.defaults."""
    import ccp

    cfg = config_lib.ExperimentConfig()
    losses = ccp.losses
    pairs = [
        (cfg.loss.pos_margin, _default(losses.ContrastiveLoss, "pos_margin")),
        (cfg.loss.neg_margin, _default(losses.ContrastiveLoss, "neg_margin")),
        (cfg.loss.cosine_margin, _default(losses.CosineContrastiveLoss, "margin")),
        (cfg.loss.triplet_margin, _default(losses.TripletLoss, "margin")),
        (cfg.loss.ms_alpha, _default(losses.MultiSimilarityLoss, "alpha")),
        (cfg.loss.ms_beta, _default(losses.MultiSimilarityLoss, "beta")),
        (cfg.loss.ms_base, _default(losses.MultiSimilarityLoss, "base")),
        (cfg.loss.proxy_anchor_alpha, _default(losses.ProxyAnchorLoss, "alpha")),
        (cfg.loss.proxy_nca_temperature, _default(losses.ProxyNCALoss, "temperature")),
        (cfg.loss.soft_triple_centers, _default(losses.SoftTripleLoss, "centers_per_class")),
        (cfg.loss.circle_margin, _default(losses.CircleLoss, "margin")),
        (cfg.loss.circle_gamma, _default(losses.CircleLoss, "gamma")),
        (cfg.loss.fastap_num_bins, _default(losses.FastAPLoss, "num_bins")),
        (cfg.loss.rll_boundary, _default(losses.RankedListLoss, "boundary")),
        (cfg.loss.rll_neg_temperature, _default(losses.RankedListLoss, "neg_temperature")),
        (cfg.loss.rll_pos_temperature, _default(losses.RankedListLoss, "pos_temperature")),
        (cfg.loss.distance, _default(losses.TripletLoss, "distance")),
        (cfg.loss.rho_p_switch, _default(losses.TripletLoss, "p_switch")),
        (cfg.loss.normalized_softmax_temperature,
         _default(losses.NormalizedSoftmaxLoss, "temperature")),
        (cfg.loss.virtual_softmax_temperature, _default(losses.VirtualSoftmaxLoss, "temperature")),
        (cfg.loss.virtual_softmax_margin, _default(losses.VirtualSoftmaxLoss, "margin")),
        (cfg.loss.proxy_synthesis_alpha, _default(losses.ProxySynthesisLoss, "alpha")),
        (cfg.loss.proxy_synthesis_mu, _default(losses.ProxySynthesisLoss, "mu")),
        (cfg.loss.mdr_weight, _default(losses.MultiLevelDistanceRegularization, "weight")),
        (cfg.loss.mdr_level_penalty,
         _default(losses.MultiLevelDistanceRegularization, "level_penalty")),
        (cfg.ccp.proxies_per_class, _default(losses.CCPLoss, "proxies_per_class")),
        (cfg.ccp.pair_weight, _default(losses.CCPLoss, "pair_weight")),
        (cfg.ccp.proxy_weight, _default(losses.CCPLoss, "proxy_weight")),
    ]
    projection = ccp.projection.AlternatingProjection
    pairs += [(getattr(cfg.ccp, name), _default(projection, name)) for name in
              ("lambda_0", "decay", "patience", "min_epochs_per_instance", "min_delta",
               "pool_size", "monitor_lag")]
    trainer = ccp.training.Trainer
    pairs += [(cfg.protocol.steps_per_epoch, _default(trainer, "steps_per_epoch")),
              (cfg.protocol.max_epochs, _default(trainer, "max_epochs")),
              (cfg.protocol.patience, _default(trainer, "patience")),
              (cfg.protocol.min_delta, _default(trainer, "min_delta"))]
    optimization = ccp.training.build_optimization
    pairs += [(getattr(cfg.optimizer, name), _default(optimization, name)) for name in
              ("learning_rate", "adam_beta_1", "adam_beta_2", "lr_schedule", "lr_decay_steps",
               "lr_plateau_patience", "weight_decay", "clip_norm", "clip_value",
               "proxy_lr_multiplier", "warmup_epochs")]
    pairs.append((cfg.optimizer.lr_plateau_factor,
                  _default(ccp.training.ReduceLROnPlateau, "factor")))
    for config_value, library_value in pairs:
        assert config_value == library_value
    # SPEC §5/§6 values where the CLI and the library used to disagree.
    assert (D.LR_DECAY_STEPS, D.LR_PLATEAU_PATIENCE, D.MAX_EPOCHS) == (10000, 4, 10000)
    assert D.CCP_MIN_DELTA == D.EARLY_STOPPING_MIN_DELTA == 1e-5


def test_flag_names_are_unique_and_round_trip():
    names = [name for name, _, _ in config_lib.flag_fields()]
    assert len(names) == len(set(names))
    cfg = config_lib.ExperimentConfig().replace(ccp=True, ccp_pool_size=5, loss="triplet",
                                                folds=2, output_dir="x")
    assert (cfg.ccp.enabled, cfg.ccp.pool_size, cfg.loss.name) == (True, 5, "triplet")
    assert (cfg.protocol.folds, cfg.run.output_dir, cfg.method) == (2, "x", "Triplet-CCP")
    assert config_lib.ExperimentConfig.from_flags(cfg.flags()) == cfg
    assert set(cfg.to_dict()) == set(config_lib.GROUPS)
    with pytest.raises(config_lib.ConfigError, match="no_such_flag"):
        cfg.replace(no_such_flag=1)
    for group in config_lib.GROUPS.values():  # every field is a flag with help text
        assert all(f.metadata["help"] for f in dataclasses.fields(group))


def test_flagfile_names_resolve_in_the_configs_folder(tmp_path):
    configs = flags_lib.CONFIGS_DIR
    assert flags_lib.resolve_flagfile("cub.cfg") == os.path.join(configs, "cub.cfg")
    assert flags_lib.resolve_flagfile("variants/ms.cfg") == os.path.join(configs, "variants",
                                                                         "ms.cfg")
    local = tmp_path / "cub.cfg"
    local.write_text("--dataset=digits\n")
    assert flags_lib.resolve_flagfile(str(local)) == str(local)  # an existing path wins
    assert flags_lib.resolve_flagfile("nope.cfg") == "nope.cfg"  # absl names the missing file
    args = flags_lib.resolve_flagfile_args(["run.py", "--flagfile=sop.cfg", "--seed=1"])
    assert args == ["run.py", f"--flagfile={os.path.join(configs, 'sop.cfg')}", "--seed=1"]
    sop = flags_lib.parse_flagfile("sop.cfg", extra=[f"--data_dir={tmp_path}"])
    assert sop.data.dataset == "sop"


def test_data_independent_conflicts_name_the_flags(tmp_path):
    base = config_lib.ExperimentConfig()
    with pytest.raises(config_lib.ConfigError, match="--weights='/no/such.h5' is not a file"):
        config_lib.validate(base.replace(backbone="resnet50", weights="/no/such.h5"))
    with pytest.raises(config_lib.ConfigError, match="--weights=imagenet is not available for "
                                                     "--backbone=small_cnn: give 'none', "
                                                     "'symbols_pretrained' or a weight file"):
        config_lib.validate(base.replace(weights="imagenet"))
    with pytest.raises(config_lib.ConfigError, match="--weights=symbols_pretrained is not "
                                                     "available for --backbone=resnet50"):
        config_lib.validate(base.replace(backbone="resnet50", weights="symbols_pretrained"))
    config_lib.validate(base.replace(weights="symbols_pretrained"))  # small_cnn's named weights
    weight_file = tmp_path / "mine.weights.h5"
    weight_file.write_bytes(b"")
    config_lib.validate(base.replace(weights=str(weight_file)))  # a user's file, small_cnn too
    with pytest.raises(config_lib.ConfigError, match="--xbm needs a pair loss"):
        config_lib.validate(base.replace(loss="soft_triple", xbm=True))
    with pytest.raises(config_lib.ConfigError, match="--ccp_min_epochs_per_instance must be >= 1"):
        config_lib.validate(base.replace(ccp_min_iterations=0))
    config_lib.validate(base.replace(dataset="glyphs"))  # embedded: no --data_dir needed
    with pytest.raises(config_lib.ConfigError, match="--miner=hard_negatives needs a pair loss"):
        config_lib.validate(base.replace(loss="proxy_nca", miner="hard_negatives"))
    with pytest.raises(config_lib.ConfigError, match="--proxy_synthesis wraps --loss=proxy_anch"):
        config_lib.validate(base.replace(loss="soft_triple", proxy_synthesis=True))
    with pytest.raises(config_lib.ConfigError, match="--noaverage_nonzero_only works with"):
        config_lib.validate(base.replace(loss="multi_similarity", average_nonzero_only=False))


def test_loss_wrappers_compose_as_the_flags_say():
    import ccp
    from experiments import builders

    base = config_lib.ExperimentConfig()
    synthesis = builders.build_loss(base.replace(loss="proxy_nca", proxy_synthesis=True), 4, 3)
    assert isinstance(synthesis, ccp.losses.ProxySynthesisLoss)
    mdr = builders.build_loss(base.replace(ccp=True, mdr=True, miner="hard_negatives"), 4)
    assert isinstance(mdr, ccp.losses.MultiLevelDistanceRegularization)
    assert base.replace(ccp=True, mdr=True).method == "C2-CCP + MDR"
    assert base.replace(loss="proxy_nca", proxy_synthesis=True).method == "ProxyNCA++ + PS"


def test_no_long_functions_or_classes():
    """Issue 12's bound in ccp/, data_pipelines/ and experiments/: functions <= 80 lines,
    classes <= 250 lines."""
    import ast

    long = []
    for package in ("ccp", "data_pipelines", "experiments"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                tree = ast.parse(open(path).read())
                for node in ast.walk(tree):
                    limit = {ast.FunctionDef: 80, ast.AsyncFunctionDef: 80,
                             ast.ClassDef: 250}.get(type(node))
                    if limit and node.end_lineno - node.lineno + 1 > limit:
                        long.append(f"{os.path.relpath(path, ROOT)}:{node.name}")
    assert long == []


@pytest.mark.slow
def test_ccp_refuses_a_non_tensorflow_keras_backend(tmp_path):
    import ccp

    (tmp_path / "keras.json").write_text('{"backend": "jax", "floatx": "float32"}')
    assert ccp.configured_keras_backend({"KERAS_HOME": str(tmp_path)}) == "jax"
    assert ccp.configured_keras_backend(
        {"KERAS_HOME": str(tmp_path), "KERAS_BACKEND": "tensorflow"}) == "tensorflow"
    assert ccp.configured_keras_backend({"KERAS_HOME": str(tmp_path / "none")}) == "tensorflow"
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", "import ccp"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "ccp needs the TensorFlow backend of Keras 3" in out.stderr and "'torch'" in out.stderr


@pytest.mark.slow
def test_ccp_turns_on_onednn_only_before_tensorflow_and_never_over_a_choice():
    import ccp

    environ = {}
    assert ccp.prefer_onednn(environ, modules={}) and environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    for chosen in ("0", "1"):
        environ = {"TF_ENABLE_ONEDNN_OPTS": chosen}
        assert not ccp.prefer_onednn(environ, modules={})
        assert environ == {"TF_ENABLE_ONEDNN_OPTS": chosen}
    environ = {}
    assert not ccp.prefer_onednn(environ, modules={"tensorflow": object()}) and environ == {}
    # The real effect, in a fresh interpreter without the variable (TensorFlow's own default on
    # this AVX2 machine is off): TensorFlow loaded after ccp runs its oneDNN kernels.
    probe = ("import ccp, tensorflow; from tensorflow.python.util import _pywrap_util_port as p;"
             " print('onednn', p.IsMklEnabled())")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "onednn True"
