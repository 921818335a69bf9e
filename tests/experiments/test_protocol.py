"""experiments/protocol.py: seeds, the run-folder lifecycle, typed fold results (digits, tiny)."""
import json
import os

import numpy as np
import pytest

from experiments import builders
from experiments import config as config_lib
from experiments import flags as flags_lib
from experiments import protocol
from experiments import results as results_lib

pytestmark = pytest.mark.slow  # end-to-end protocol runs


def _tiny(output_dir, **changes):
    values = dict(output_dir=str(output_dir), steps_per_epoch=2, max_epochs=1, embedding_size=8,
                  ccp_pool_size=2, ccp_proxies_per_class=2, folds=2, classes_per_batch=2,
                  samples_per_class=3, eval_batch_size=256, progress_bar=False, export=False,
                  report=False, compute_nmi=False, seed=5)
    values.update(changes)
    return flags_lib.parse_flagfile("digits.cfg").replace(**values)


def test_data_conflicts_are_found_before_anything_is_written(tmp_path):
    config = _tiny(tmp_path / "run", classes_per_batch=4)  # a training fold has 2 classes
    with pytest.raises(config_lib.ConfigError, match="--classes_per_batch=4 exceeds the 2"):
        protocol.run(config)
    with pytest.raises(config_lib.ConfigError, match="--folds=6 needs"):
        protocol.run(config.replace(folds=6, classes_per_batch=1))
    assert not os.path.exists(tmp_path / "run")


def test_same_seed_same_results_and_a_complete_folder_is_left_alone(tmp_path):
    first, second = _tiny(tmp_path / "a"), _tiny(tmp_path / "b")
    results = protocol.run(first)
    protocol.run(second)
    stored = [json.load(open(os.path.join(c.run.output_dir, "results.json")))
              for c in (first, second)]
    assert stored[0] == stored[1]
    assert results["method"] == "C2-CCP"
    # Typed fold results round-trip through their files.
    fold = results_lib.FoldResult.load(os.path.join(first.run.output_dir, "repeat_0", "fold_1"),
                                       repeat=0)
    assert fold.fold == 1 and fold.test_metrics == stored[0]["per_fold"][1]["metrics"]
    assert fold.proxies.embeddings.shape == (fold.train_classes * 2, 8)
    assert fold.query.embeddings.shape[0] == fold.query.labels.shape[0]
    # The completion marker comes last; a rerun of the complete folder changes nothing.
    output = first.run.output_dir
    marker = json.load(open(os.path.join(output, "COMPLETE")))
    assert "results.json" in marker["artifacts"]
    before = {name: os.path.getmtime(os.path.join(output, name)) for name in os.listdir(output)}
    again = protocol.run(first)
    assert again.get("already_complete") and again["average"] == results["average"]
    assert {n: os.path.getmtime(os.path.join(output, n)) for n in os.listdir(output)} == before
    assert not os.path.exists(os.path.join(output, "run.lock"))


def test_the_fold_seed_reaches_the_weight_initialization(tmp_path):
    config = _tiny(tmp_path)

    def initial_weights(seed):
        builders.seed_everything(seed)
        return [w.numpy() for w in builders.build_model(config).weights]

    first, again, other = initial_weights(3), initial_weights(3), initial_weights(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
