"""Builds the library objects one experiment needs from its ExperimentConfig.

Each builder is a plain function of the config; names are looked up in
``experiments.registry`` (the config validation already rejected unknown ones).
"""
import socket

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import ccp
import data_pipelines
from experiments import config as config_lib
from experiments import pretraining
from experiments import registry


def build_loss(config, num_classes, seed=0):
    """The loss layer: the base loss, inside Proxy Synthesis (proxy losses), CCP and/or a
    cross-batch memory (pair losses) and MDR (any) when asked."""
    spec = registry.LOSSES[config.loss.name]
    embedding_size = config.model.embedding_size
    loss = spec.build(config.loss, num_classes, embedding_size, seed)
    if config.loss.proxy_synthesis:
        loss = ccp.losses.ProxySynthesisLoss(
            loss, alpha=config.loss.proxy_synthesis_alpha, mu=config.loss.proxy_synthesis_mu,
            seed=seed)
    if spec.kind == registry.PAIR:
        loss = _wrap_pair_loss(config, loss, num_classes)
    if config.loss.mdr:
        loss = ccp.losses.MultiLevelDistanceRegularization(
            loss, weight=config.loss.mdr_weight, level_penalty=config.loss.mdr_level_penalty)
    return loss


def _wrap_pair_loss(config, loss, num_classes):
    """CCP and/or a cross-batch memory around a pair loss."""
    embedding_size = config.model.embedding_size
    if config.ccp.enabled:
        loss = ccp.losses.CCPLoss(
            loss, num_classes, embedding_size,
            proxies_per_class=config.ccp.proxies_per_class,
            pair_weight=config.ccp.pair_weight, proxy_weight=config.ccp.proxy_weight,
        )
    if config.xbm.enabled:
        loss = ccp.losses.CrossBatchMemory(
            loss, embedding_size,
            memory_size=config.xbm.memory_batches * config.batch_size,
            start_at=config.xbm.start_at,
            batch_weight=config.xbm.batch_weight, memory_weight=config.xbm.memory_weight,
            delay_until_full=config.xbm.delay_until_full,
        )
    return loss


def resolve_weights(weights):
    """--weights -> the library's ``weights`` argument: None, "imagenet" or a file path
    ("symbols_pretrained" is the cached small_cnn pretrained on `symbols`, pretrained first
    when missing: experiments/pretraining.py)."""
    if weights in ("none", ""):
        return None
    if weights == pretraining.WEIGHTS_NAME:
        return pretraining.pretrained_weights(log=logging.info)
    return weights


def build_model(config, name=None):
    model = config.model
    return ccp.models.build_embedding_model(
        backbone=model.backbone,
        embedding_size=model.embedding_size,
        embedding_bias=model.embedding_bias,
        weights=resolve_weights(model.weights),
        pooling=model.pooling,
        freeze_batchnorm=registry.FREEZE_BATCHNORM[model.freeze_batchnorm],
        image_size=config.resolved_image_size,
        name=name,
    )


def build_strategy(config):
    """The tf.distribute strategy named by --strategy."""
    if config.run.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.run.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.run.strategy == "tpu":
        return tpu_strategy(config.run.tpu)
    return tf.distribute.get_strategy()


TPU_CONNECT_TIMEOUT_S = 15.0  # a grpc:// address that does not answer fails, never hangs


def tpu_strategy(tpu):
    """TPUStrategy on ``tpu``: a Cloud TPU name, "local" (on a TPU VM) or grpc://HOST:PORT.

    Raises config.UserError naming --tpu when no TPU answers there.
    """
    try:
        if tpu.startswith("grpc://"):  # gRPC would retry an unreachable worker for minutes
            host, _, port = tpu[len("grpc://"):].rpartition(":")
            socket.create_connection((host, int(port)), timeout=TPU_CONNECT_TIMEOUT_S).close()
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (OSError, ValueError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise config_lib.UserError(f"--tpu={tpu!r}: no TPU reachable there ({reason}); give the "
                                   "Cloud TPU name, 'local' on a TPU VM, or grpc://HOST:PORT") \
            from error
    return tf.distribute.TPUStrategy(resolver)


def set_precision(config):
    keras.mixed_precision.set_global_policy(config.run.precision)


def set_determinism(config):
    """--deterministic: TensorFlow op determinism (bit-identical reruns of one command)."""
    if config.protocol.deterministic:
        tf.config.experimental.enable_op_determinism()


def seed_everything(seed):
    """Seeds Python, numpy, TensorFlow and the Keras global seed (weight initialization).

    Called before each fold model is built, with the fold's seed, so a resumed run builds every
    fold exactly as an uninterrupted one. Samplers, augmentation and CCP pools take their own
    explicit seeds derived from the same fold seed.
    """
    keras.utils.set_random_seed(int(seed))


def load_splits(config):
    """The data set's DatasetSplits, checked by its loader (layout, counts, images)."""
    data = config.data
    options = dict(skip_corrupt=data.skip_corrupt, allow_partial=data.allow_partial,
                   data_source=data.data_source)
    if data.dataset in registry.EMBEDDED_DATASETS:  # rendered at the model's input size
        return data_pipelines.load(data.dataset, None, image_size=config.resolved_image_size,
                                   **options)
    if data.cub_variant != "standard":  # the reference's noisy / closed-set CUB
        options.update(variant=data.cub_variant, noise_seed=data.label_noise_seed)
    if data.crop_to_bbox:
        options["crop_to_bbox"] = True
    return data_pipelines.load(data.dataset, data.data_dir, **options)


def train_dataset_fn(config, records, seed):
    """start_step -> the step-deterministic training stream of a fold (SPEC §6 batches)."""
    data = config.data

    def make(start_step):
        return data_pipelines.train_dataset(
            records,
            classes_per_batch=data.classes_per_batch,
            samples_per_class=data.samples_per_class,
            seed=seed,
            start_step=start_step,
            image_size=config.resolved_image_size,
            min_area=data.min_crop_area,
            flip=data.flip,
            cache=data.cache_images,
            input_pipeline=data.input_pipeline,
        )

    return make


def eval_dataset(config, records):
    return data_pipelines.eval_dataset(
        records, batch_size=config.protocol.eval_batch_size,
        image_size=config.resolved_image_size)


def pool_seed(seed, projection_index):
    """The seed of proxy-pool draw ``projection_index`` of a fold with seed ``seed``."""
    return seed + 7919 * (projection_index + 1)


def proxy_pool_fn(config, records, seed):
    """(model, projection_index) -> raw pool embeddings [C, b, D] for CCP (SPEC §5.3).

    The pool holds ``b`` images of every class drawn by the one-per-class sampler (``b * K``
    when ``b < K``, SPEC §5), with the --ccp_pool_transform (the training augmentation by
    default, as the reference), embedded with the model in inference mode. Draw ``t`` (0 = the
    initial proxies) is a pure function of (seed, t): a resumed run draws the same pool.
    """
    rounds = ccp.projection.pool_rounds(config.ccp.pool_size, config.ccp.proxies_per_class)
    num_classes = records.num_classes
    transform = config.ccp.pool_transform

    def pool(model, projection_index):
        logging.info("proxy pool: %d images/class, %s transform, draw %d", rounds, transform,
                     projection_index)
        dataset = data_pipelines.one_per_class_dataset(
            records,
            rounds=rounds,
            batch_size=config.protocol.eval_batch_size,
            seed=pool_seed(seed, projection_index),
            image_size=config.resolved_image_size,
            transform=transform,
            min_area=config.data.min_crop_area,
            flip=config.data.flip,
        )
        embeddings, _ = ccp.training.embed_dataset(model, dataset)
        pool_round_major = np.reshape(embeddings, [rounds, num_classes, -1])
        return np.transpose(pool_round_major, [1, 0, 2])

    return pool
