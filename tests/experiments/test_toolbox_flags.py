"""Issue 15 flags of experiments/run.py reach the library: data variants and crops, optimizers
and warm-up, CCP options, PCA and AllAtK outputs."""
import os

import numpy as np
import pytest
from PIL import Image

from ccp import metrics
from ccp.training import optimizer_registry
from ccp.training import optimizers as optimizers_lib
from experiments import builders, fold_training, protocol
from experiments import config as config_lib
from experiments import flags as flags_lib
from experiments.results import Embedded

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def _digits(**changes):
    return flags_lib.parse_flagfile(os.path.join(CONFIGS, "digits.cfg")).replace(**changes)


@pytest.mark.parametrize("changes, flag", [
    (dict(nesterov=True), "--nesterov needs --optimizer=sgd"),
    (dict(optimizer="adagrad", momentum=0.9), "--momentum needs"),
    (dict(cub_variant="closed"), "--cub_variant needs --dataset=cub"),
    (dict(crop_to_bbox=True), "--crop_to_bbox needs"),
    (dict(eval_at_k=(0, 4)), "--eval_at_k must be positive"),
    (dict(eval_pca_dim=-1), "--eval_pca_dim must be >= 0"),
    (dict(warmup_lr_multiplier=0.0), "--warmup_lr_multiplier must be > 0"),
])
def test_bad_combinations_are_one_line_errors(changes, flag):
    with pytest.raises(config_lib.ConfigError, match=flag):
        config_lib.validate(_digits(**changes))


def test_optimizer_warmup_and_ccp_flags_reach_the_library():
    config = config_lib.validate(_digits(
        optimizer="sgd", momentum=0.9, nesterov=True, warmup_epochs=0.5,
        warmup_lr_multiplier=2.0, warmup_all_layers=True, ccp=True,
        ccp_monitor_metric="precision_at_1", ccp_fixed_interval=3, ccp_perturb_noise=0.05,
        ccp_normalized_kcenter=True))
    model = builders.build_model(config)
    loss = builders.build_loss(config, num_classes=4)
    proj = fold_training.build_projection(config, model, loss)
    assert proj.monitor == "precision_at_1" and proj.schedule.fixed_interval == 3
    assert proj.perturb_noise == 0.05 and proj.normalized_kcenter
    opt = fold_training.build_optimization(config, model, loss, proj)
    sgd = optimizers_lib.inner_optimizer(opt.train.optimizer)
    assert isinstance(sgd, optimizer_registry.SGDLRM) and sgd.nesterov and sgd.momentum == 0.9
    assert opt.warmup_fraction == 0.5 and opt.warmup.model_training
    warm_lr = optimizers_lib.inner_optimizer(opt.warmup.optimizer).learning_rate
    assert float(warm_lr.numpy()) == pytest.approx(2.0 * config.optimizer.learning_rate)


def test_pca_and_all_at_k_in_the_test_metrics():
    rng = np.random.default_rng(0)
    query = Embedded(rng.normal(size=(30, 8)).astype(np.float32), rng.integers(0, 4, 30))
    ref = Embedded(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 4, 40))
    config = config_lib.validate(_digits(eval_pca_dim=3, eval_at_k=(1, 4), compute_nmi=False))
    got = protocol.test_metrics(config, query, ref)
    mean, comps = metrics.pca_fit(ref.embeddings, 3)

    def projected(x):  # PCA on the reference set, then SPEC §2's normalization x / max(|x|, 1)
        y = metrics.pca_transform(x, mean, comps)
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1.0)

    lists = metrics.all_at_k(projected(query.embeddings), query.labels, (1, 4),
                                       projected(ref.embeddings), ref.labels)
    assert got["allatk_map_at_4"] == pytest.approx(lists["map_at_k"][1], rel=1e-5)
    assert got["allatk_precision_at_1"] == pytest.approx(lists["precision_at_k"][0], rel=1e-5)
    assert got["allatk_recall_at_4"] == pytest.approx(lists["recall_at_k"][1], rel=1e-5)
    assert got["map_at_r"] == pytest.approx(lists["map_at_r"], rel=1e-4)


def test_cub_variant_and_crop_flags_reach_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "CUB_200_2011"
    images, labels, boxes = [], [], []
    for image_id, cls in enumerate((1, 1, 1, 101, 101, 101), start=1):
        rel = f"{cls:03d}.Bird/{image_id}.jpg"
        os.makedirs(root / "images" / os.path.dirname(rel), exist_ok=True)
        pixels = np.random.default_rng(image_id).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / rel, format="JPEG")
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cls}")
        boxes.append(f"{image_id} 2.0 3.0 10.0 8.0")
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels),
                       ("bounding_boxes.txt", boxes)):
        (root / name).write_text("\n".join(rows) + "\n")
    config = config_lib.validate(_digits(dataset="cub", data_dir=str(tmp_path),
                                         allow_partial=True, cub_variant="closed",
                                         crop_to_bbox=True))
    splits = builders.load_splits(config)
    assert splits.train.labels.tolist() == [1, 1, 101, 101]  # round(0.65 * 3) = 2 per class
    assert splits.test.labels.tolist() == [1, 101]
    with Image.open(splits.train.paths[0]) as crop:
        assert crop.size == (10, 8)
