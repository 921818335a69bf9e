"""Learning regression: a short C2-CCP run on `glyphs` must beat an untrained network.

The run goes through the experiment runner exactly as a user would (``experiments/run.py`` in a
subprocess; one model on the 202 training classes, 150 steps, no validation split): the
m-per-class sampler, the C2 + proxy loss and CCP's k-center proxy projection (from a zero cover,
the initialization) all take part. Its test MAP@R (203 unseen characters) is compared with the
same architecture, untrained, on the same test images.

Measured while writing the test (seed 0, 2-core CPU): untrained 1.02 %; this run 5.45 % and
4.12 % with the tree of two moments of the same day (other changes moved it). Broken once each:
- the loss (positive and negative masks swapped in the fused C2-CCP loss): 1.46 %, caught;
- the sampler (the first m-per-class batch repeated forever): 2.24 %, caught;
- the projection (the k-center picks of class c written to the proxies of class c + 1): 4.32 %,
  NOT caught: at this budget the trained proxies recover from a wrong start, and the drop is
  within the spread of healthy runs across code versions.
The bar, untrained + ``MIN_GAIN`` = 3.02 %, sits between the caught breakages and the healthy
runs.
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
# Trained test MAP@R must exceed the untrained one by this much (absolute, in [0, 1]): above the
# gains of the broken loss (0.004) and sampler (0.012), below the healthy gains (0.031-0.044).
MIN_GAIN = 0.02
RUN_FLAGS = (
    "--dataset=glyphs", "--backbone=small_cnn", "--weights=none", "--image_size=32",
    "--embedding_size=128", "--min_crop_area=0.6", "--noflip", "--learning_rate=1e-3",
    "--classes_per_batch=8", "--samples_per_class=4", "--loss=contrastive", "--pos_margin=0.0",
    "--neg_margin=0.3841", "--ccp", "--ccp_proxies_per_class=4", "--ccp_pool_size=8",
    "--steps_per_epoch=25", "--max_epochs=6", "--folds=1",
    "--noexport", "--noreport", "--nocompute_nmi", "--noprogress_bar", f"--seed={SEED}",
)


def untrained_map_at_r(test_records):
    """Test MAP@R of a freshly initialized small_cnn (128D), the runner's model builder."""
    import keras

    import ccp
    import data_pipelines

    keras.utils.set_random_seed(SEED)
    model = ccp.models.build_embedding_model(backbone="small_cnn", embedding_size=128,
                                             image_size=32, weights=None)
    dataset = data_pipelines.eval_dataset(test_records, batch_size=256, image_size=32)
    embeddings = model.predict(dataset, verbose=0)
    return ccp.metrics.retrieval_metrics(embeddings, test_records.labels)["map_at_r"]


def test_short_glyphs_run_beats_an_untrained_network(tmp_path):
    import data_pipelines

    output_dir = str(tmp_path / "run")
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "run.py"), *RUN_FLAGS,
         f"--output_dir={output_dir}"],
        cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(os.path.join(output_dir, "results.json")) as handle:
        results = json.load(handle)
    trained = results["average"]["map_at_r"]["mean"]
    baseline = untrained_map_at_r(data_pipelines.load("glyphs", image_size=32).test)
    assert 0.0 < baseline < 0.02, baseline  # chance level of 203 classes is ~0.3 %
    assert np.isfinite(trained) and trained > baseline + MIN_GAIN, (trained, baseline)
    # CCP's k-center projection built the proxies (from a pool of 8 embeddings per class)
    path = os.path.join(output_dir, "repeat_0", "fold_0", "logs", "events.jsonl")
    with open(path) as handle:
        events = [json.loads(line) for line in handle]
    init = [e for e in events if e.get("event") == "proxy_init"]
    assert len(init) == 1 and init[0]["pool_size"] == 8, events[:2]
