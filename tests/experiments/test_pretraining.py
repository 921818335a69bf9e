"""--weights=symbols_pretrained: the cache of the pretrained backbone (the pretraining itself is
exercised by tests/test_learning_regression_pretrained.py)."""
import dataclasses

import pytest

from experiments import builders, pretraining


def test_every_recipe_setting_names_its_own_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv("CCP_CACHE_DIR", str(tmp_path))
    weights, record = pretraining.paths()
    assert weights.startswith(str(tmp_path / "pretrained")) and weights.endswith(".weights.h5")
    assert record.endswith(".json")
    for change in (dict(steps=10), dict(learning_rate=1e-3), dict(seed=1),
                   dict(samples_per_face=1)):
        assert pretraining.paths(dataclasses.replace(pretraining.RECIPE, **change))[0] != weights


def test_a_cached_backbone_is_used_without_pretraining(monkeypatch, tmp_path):
    monkeypatch.setenv("CCP_CACHE_DIR", str(tmp_path))
    weights, record = pretraining.paths()
    (tmp_path / "pretrained").mkdir()
    for path in (weights, record):
        with open(path, "w") as handle:
            handle.write("{}")

    def must_not_run(*args, **kwargs):
        raise AssertionError("pretrained again although the cache holds the weights")

    monkeypatch.setattr(pretraining, "pretrain", must_not_run)
    assert pretraining.pretrained_weights() == weights
    assert builders.resolve_weights("symbols_pretrained") == weights
    assert builders.resolve_weights("none") is None
    assert builders.resolve_weights("/my/backbone.weights.h5") == "/my/backbone.weights.h5"
    assert pretraining.pretraining_record() == {}


def test_a_half_written_cache_pretrains_again(monkeypatch, tmp_path):
    """Weights without their record (a pretraining killed between the two writes) do not count."""
    monkeypatch.setenv("CCP_CACHE_DIR", str(tmp_path))
    weights, _ = pretraining.paths()
    (tmp_path / "pretrained").mkdir()
    open(weights, "w").close()

    class Pretrained(Exception):
        pass

    def pretrain(*args, **kwargs):
        raise Pretrained

    monkeypatch.setattr(pretraining, "pretrain", pretrain)
    with pytest.raises(Pretrained):
        pretraining.pretrained_weights(log=lambda message: None)
