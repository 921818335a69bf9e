"""Checkpoints of a training run: what is saved, where each worker saves, and resuming.

Saving is collective under multi-worker strategies, so every worker saves; only the chief's
folder is the run's. The other workers write to a private sub-folder and resume from the
chief's latest checkpoint.
"""
import os

import tensorflow as tf
from absl import logging

from ccp import defaults
from ccp.training import distribution


def random_states(layers):
    """The random-number states of ``layers`` (e.g. Dropout's ``keras.random.SeedGenerator``).

    Keras documents ``Layer.variables`` as ``Layer.weights`` plus all other layer state,
    "including random seeds"; ``tf.train.Checkpoint`` does not reach those through the layers,
    so they are saved explicitly.

    Args:
      layers: layers (models) to scan.
    Returns:
      list of variables.
    """
    states = []
    for layer in layers:
        weight_ids = {id(w) for w in layer.weights}
        states.extend(v for v in layer.variables if id(v) not in weight_ids)
    return states


class DamagedCheckpointError(ValueError):
    """Every kept checkpoint of a folder is damaged (names them and the folder)."""


class Checkpointing:
    """A ``tf.train.CheckpointManager`` over ``objects`` in this worker's folder.

    Args:
      objects: dict name -> trackable (model, loss, optimizers, state, ...), as
        ``tf.train.Checkpoint(**objects)``.
      checkpoint_dir: the run's folder (the chief's), or None to disable checkpoints.
      strategy: the ``tf.distribute.Strategy`` (decides the chief).
      max_to_keep: checkpoints kept.
    """

    def __init__(self, objects, checkpoint_dir, strategy, max_to_keep=defaults.MAX_CHECKPOINTS):
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.checkpoint_dir = checkpoint_dir
        self.is_chief, worker_name = distribution.worker_role(strategy)
        self.manager = None
        if checkpoint_dir:
            save_dir = checkpoint_dir if self.is_chief else os.path.join(checkpoint_dir,
                                                                         worker_name)
            self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir,
                                                      max_to_keep=int(max_to_keep))

    @property
    def latest_checkpoint(self):
        """This worker's latest saved checkpoint, or None."""
        return None if self.manager is None else self.manager.latest_checkpoint

    def save(self, number):
        """Saves checkpoint ``number`` (the epoch); no-op without a folder."""
        if self.manager is not None:
            self.manager.save(checkpoint_number=number)

    def restore(self):
        """Restores the chief's latest readable checkpoint; returns its path or None.

        A damaged checkpoint (truncated or unreadable files) is skipped with a warning naming
        it, and the previous one is restored instead.

        Raises:
          ValueError: the checkpoint was written by a run with other objects (model, loss,
            optimizer, projection or schedule differ).
          DamagedCheckpointError: every kept checkpoint is damaged.
        """
        if self.manager is None:
            return None
        state = tf.train.get_checkpoint_state(self.checkpoint_dir)  # the chief's, every worker
        if state is None or not state.model_checkpoint_path:
            return None
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        if paths[-1] != state.model_checkpoint_path:
            paths.append(state.model_checkpoint_path)
        paths = [p if os.path.isabs(p) else os.path.join(self.checkpoint_dir, p) for p in paths]
        damaged = []
        for path in reversed(paths):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (AssertionError, ValueError) as error:  # missing objects / other shapes
                raise ValueError(
                    f"checkpoint {path} does not match this trainer (model, loss, optimizer, "
                    f"projection or schedule differ from the run that wrote it); use another "
                    f"checkpoint folder or the same settings: {error}") from error
            except (IndexError, tf.errors.OpError) as error:  # truncated / unreadable files
                reason = " ".join(str(error).split())[:200] or type(error).__name__
                logging.warning("checkpoint %s is damaged (%s: %s); trying the one before it",
                                path, type(error).__name__, reason)
                damaged.append(path)
                continue
            if damaged:
                logging.warning("resumed from %s instead of the damaged %s", path,
                                ", ".join(damaged))
            logging.info("resumed from %s", path)
            return path
        raise DamagedCheckpointError(f"every checkpoint in {self.checkpoint_dir} is damaged "
                         f"({', '.join(damaged)}); delete that folder to train from the start")
