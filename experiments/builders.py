"""Builds the library objects one experiment needs from its ExperimentConfig.

Each builder is a plain function of the config; the registries are explicit dicts, so an
unknown name fails with the list of valid ones (the config validation already caught it).
"""
import keras
import numpy as np
import tensorflow as tf

import ccp
import data_pipelines


def _contrastive(config):
    return ccp.losses.ContrastiveLoss(pos_margin=config.pos_margin, neg_margin=config.neg_margin)


def _cosine_contrastive(config):
    return ccp.losses.CosineContrastiveLoss(margin=config.cosine_margin)


def _triplet(config):
    return ccp.losses.TripletLoss(margin=config.triplet_margin)


def _multi_similarity(config):
    return ccp.losses.MultiSimilarityLoss(
        alpha=config.ms_alpha, beta=config.ms_beta, base=config.ms_base, mining=config.ms_mining
    )


def _margin(config):
    return ccp.losses.MarginLoss(margin=config.margin_alpha, beta_init=config.margin_beta)


def _proxy_anchor(config, num_classes):
    return ccp.losses.ProxyAnchorLoss(
        num_classes, config.embedding_size,
        margin=config.proxy_anchor_margin, alpha=config.proxy_anchor_alpha,
    )


def _proxy_nca(config, num_classes):
    return ccp.losses.ProxyNCALoss(
        num_classes, config.embedding_size, temperature=config.proxy_nca_temperature
    )


def _soft_triple(config, num_classes):
    return ccp.losses.SoftTripleLoss(
        num_classes, config.embedding_size,
        centers_per_class=config.soft_triple_centers,
        lamda=config.soft_triple_lambda, gamma=config.soft_triple_gamma,
        tau=config.soft_triple_tau, margin=config.soft_triple_margin,
    )


PAIR_LOSS_BUILDERS = {
    "contrastive": _contrastive,
    "cosine_contrastive": _cosine_contrastive,
    "triplet": _triplet,
    "multi_similarity": _multi_similarity,
    "margin": _margin,
}
PROXY_LOSS_BUILDERS = {
    "proxy_anchor": _proxy_anchor,
    "proxy_nca": _proxy_nca,
    "soft_triple": _soft_triple,
}


def build_loss(config, num_classes):
    """The loss layer: base loss, optionally inside CCP and/or a cross-batch memory."""
    if config.loss in PROXY_LOSS_BUILDERS:
        return PROXY_LOSS_BUILDERS[config.loss](config, num_classes)
    loss = PAIR_LOSS_BUILDERS[config.loss](config)
    if config.ccp:
        loss = ccp.losses.CCPLoss(
            loss, num_classes, config.embedding_size,
            proxies_per_class=config.ccp_proxies_per_class,
            pair_weight=config.ccp_pair_weight, proxy_weight=config.ccp_proxy_weight,
        )
    if config.xbm:
        loss = ccp.losses.CrossBatchMemory(
            loss, config.embedding_size,
            memory_size=config.xbm_memory_batches * config.batch_size,
            start_at=config.xbm_start_at,
            batch_weight=config.xbm_batch_weight, memory_weight=config.xbm_weight,
        )
    return loss


def build_model(config, name=None):
    freeze = {"auto": None, "true": True, "false": False}[config.freeze_batchnorm]
    weights = None if config.weights in ("none", "") else config.weights
    return ccp.models.build_embedding_model(
        backbone=config.backbone,
        embedding_size=config.embedding_size,
        weights=weights,
        pooling=config.pooling,
        freeze_batchnorm=freeze,
        image_size=config.resolved_image_size,
        name=name,
    )


def build_strategy(config):
    """The tf.distribute strategy named by --strategy."""
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def set_precision(config):
    keras.mixed_precision.set_global_policy(config.precision)


def train_dataset_fn(config, records, seed):
    """start_step -> the step-deterministic training stream of a fold (SPEC §6 batches)."""

    def make(start_step):
        return data_pipelines.train_dataset(
            records,
            classes_per_batch=config.classes_per_batch,
            samples_per_class=config.samples_per_class,
            seed=seed,
            start_step=start_step,
            image_size=config.resolved_image_size,
            min_area=config.min_crop_area,
            flip=config.flip,
            cache=config.cache_images,
        )

    return make


def eval_dataset(config, records):
    return data_pipelines.eval_dataset(
        records, batch_size=config.eval_batch_size, image_size=config.resolved_image_size
    )


def proxy_pool_fn(config, records, seed):
    """(model, projection_index) -> raw pool embeddings [C, b, D] for CCP (SPEC §5.3).

    The pool holds ``b`` images of every class drawn by the one-per-class sampler (``b * K``
    when ``b < K``, SPEC §5), embedded with the model in inference mode.
    """
    rounds = config.ccp_pool_size
    if rounds < config.ccp_proxies_per_class:
        rounds *= config.ccp_proxies_per_class
    num_classes = records.num_classes

    def pool(model, projection_index):
        dataset = data_pipelines.one_per_class_dataset(
            records,
            rounds=rounds,
            batch_size=config.eval_batch_size,
            seed=seed + 7919 * (projection_index + 1),
            image_size=config.resolved_image_size,
        )
        embeddings, _ = ccp.training.embed_dataset(model, dataset)
        pool_round_major = np.reshape(embeddings, [rounds, num_classes, -1])
        return np.transpose(pool_round_major, [1, 0, 2])

    return pool


def build_projection(config):
    """The CCP schedule (SPEC §5) for --ccp runs, else None."""
    if not config.ccp:
        return None
    return ccp.projection.AlternatingProjection(
        lambda_0=config.ccp_lambda,
        decay=config.ccp_decay,
        patience=config.ccp_patience,
        min_iterations=config.ccp_min_iterations,
        min_delta=config.min_delta,
        pool_size=config.ccp_pool_size,
        random_init=config.ccp_random_init,
        monitor_lag=config.ccp_monitor_lag,
    )


def trainer_arguments(config, model, loss, strategy, fold_dir):
    """Keyword arguments of ccp.training.Trainer for one fold (call inside strategy.scope()).

    The fold's seed lives in the data streams; the trainer itself draws no random numbers.
    """
    return dict(
        model=model,
        loss=loss,
        strategy=strategy,
        learning_rate=config.learning_rate,
        adam_beta_1=config.adam_beta_1,
        adam_beta_2=config.adam_beta_2,
        lr_schedule=config.lr_schedule,
        lr_decay_rate=config.lr_decay_rate,
        lr_decay_steps=config.lr_decay_steps,
        lr_plateau_patience=config.lr_plateau_patience,
        proxy_lr_multiplier=config.proxy_lr_multiplier,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        clip_value=config.clip_value,
        projection=build_projection(config),
        steps_per_epoch=config.steps_per_epoch,
        max_epochs=config.max_epochs,
        patience=config.patience,
        min_delta=config.min_delta,
        warmup_epochs=config.warmup_epochs,
        checkpoint_dir=f"{fold_dir}/checkpoints",
        log_dir=f"{fold_dir}/logs",
        recall_at=config.recall_at,
        progress_bar=config.progress_bar,
    )
