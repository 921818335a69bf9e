"""Trains one fold model: the Trainer and CCP-projection call sites of the protocol.

The library wiring (``ccp.training``, ``ccp.projection``) is kept in this one module so that a
change of the trainer's constructor touches nothing else in ``experiments/``.
"""
from absl import logging

import ccp
from experiments import builders
from experiments import covering
from experiments import monitored

EMBEDDING_LAYER = "embedding"  # SPEC §1: the embedding head of ccp.models


def build_projection(config, model, loss):
    """The CCP schedule (SPEC §5) for --ccp runs, else None (call inside the strategy scope)."""
    if not config.ccp.enabled:
        return None
    cfg = config.ccp
    metric = "MAP@R" if config.protocol.monitor == "map_at_r" else config.protocol.monitor
    if cfg.projection_every_steps:
        logging.info("CCP schedule: a projection after every %d training steps, no instance "
                     "early stopping (--ccp_projection_every_steps)", cfg.projection_every_steps)
    elif cfg.monitor_lag:
        logging.info("CCP schedule: one epoch late, it reacts to the previous epoch's %s "
                     "(--ccp_monitor_lag=1, the reference's timing)", metric)
    else:
        logging.info("CCP schedule: reacts to the current epoch's %s (--ccp_monitor_lag=0)",
                     metric)
    return ccp.projection.AlternatingProjection(
        model.trainable_variables, proxy_owner=loss,
        lambda_0=cfg.lambda_0, decay=cfg.decay, patience=cfg.patience,
        min_epochs_per_instance=cfg.min_epochs_per_instance, min_delta=cfg.min_delta,
        pool_size=cfg.pool_size, random_init=cfg.random_init, monitor_lag=cfg.monitor_lag,
        monitor=cfg.monitor, fixed_interval=cfg.fixed_interval,
        perturb_noise=cfg.perturb_noise, noise_seed=config.protocol.seed,
        normalized_kcenter=cfg.normalized_kcenter,
        projection_every_steps=cfg.projection_every_steps,
    )


def build_optimization(config, model, loss, projection):
    """Adam, learning-rate schedule and gradient transforms of SPEC §6 (inside the scope)."""
    opt = config.optimizer
    plateau = opt.lr_schedule == "plateau"
    warmup_variables = None
    if opt.warmup_epochs:  # the embedding head (and, added by the library, the loss's variables)
        warmup_variables = list(model.get_layer(EMBEDDING_LAYER).trainable_variables)
    return ccp.training.build_optimization(
        model, loss, projection=projection,
        learning_rate=opt.learning_rate, adam_beta_1=opt.adam_beta_1,
        adam_beta_2=opt.adam_beta_2, lr_schedule=opt.lr_schedule,
        lr_decay_rate=opt.lr_plateau_factor if plateau else opt.lr_decay_rate,
        lr_decay_steps=opt.lr_decay_steps, lr_plateau_patience=opt.lr_plateau_patience,
        proxy_lr_multiplier=opt.proxy_lr_multiplier, weight_decay=opt.weight_decay,
        clip_norm=opt.clip_norm, clip_value=opt.clip_value,
        warmup_epochs=opt.warmup_epochs, warmup_variables=warmup_variables,
        optimizer=opt.optimizer, nesterov=opt.nesterov, rmsprop_rho=opt.rmsprop_rho,
        momentum=opt.momentum if opt.optimizer in ("sgd", "rmsprop") else None,
        warmup_lr_multiplier=opt.warmup_lr_multiplier, warmup_all_layers=opt.warmup_all_layers,
    )


def build_trainer(config, model, loss, strategy, fold_dir):
    """The fold's ccp.training.Trainer (call inside strategy.scope()).

    The fold's seed lives in the data streams; the trainer itself draws no random numbers.
    """
    protocol = config.protocol
    projection = build_projection(config, model, loss)
    trainer_class, extra = ccp.training.Trainer, {}
    if protocol.select_on_test or protocol.monitor != "map_at_r":
        trainer_class = monitored.MonitoredTrainer
        extra = dict(monitor=protocol.monitor,
                     monitored_split="test" if protocol.select_on_test else "validation")
    return trainer_class(
        model, loss, build_optimization(config, model, loss, projection), **extra,
        strategy=strategy,
        steps_per_epoch=protocol.steps_per_epoch, max_epochs=protocol.max_epochs,
        patience=protocol.patience, min_delta=protocol.min_delta,
        checkpoint_dir=f"{fold_dir}/checkpoints", log_dir=f"{fold_dir}/logs",
        recall_at=protocol.recall_at, progress_bar=config.run.progress_bar,
        steps_per_execution=config.run.steps_per_execution, jit_compile=config.run.jit_compile,
    )


def monitored_data(config, fold, test_sets=None):
    """What the trainer validates on: the fold's validation classes, or with --select_on_test
    the test split ``test_sets`` (``.query``, ``.reference`` records; reference None = the
    query set itself), as the reference's conventional configs do."""
    if config.protocol.select_on_test:
        logging.warning("--select_on_test: early stopping, the learning-rate plateau and the CCP "
                        "schedule monitor %s of the TEST split (the reference's conventional "
                        "protocol); the reported test metrics are not from held-out data",
                        config.protocol.monitor)
        query = builders.eval_dataset(config, test_sets.query)
        if test_sets.reference is None:
            return query
        return query, builders.eval_dataset(config, test_sets.reference)
    return builders.eval_dataset(config, fold.val) if fold.val is not None else None


def train_fold(config, fold, fold_dir, seed, strategy, test_sets=None):
    """Trains one fold model (resuming from its checkpoint) and returns (model, loss, result).

    ``result`` is the dict of ``Trainer.fit`` (epochs, best_metric, history, projections, ...).
    ``test_sets``: the test split's query/reference records, needed with --select_on_test.
    """
    train_records = fold.train
    with strategy.scope():
        model = builders.build_model(config, name=f"fold_{fold.index}")
        loss = builders.build_loss(config, train_records.num_classes, seed)
        trainer = build_trainer(config, model, loss, strategy, fold_dir)
    validation = monitored_data(config, fold, test_sets)
    pool = builders.proxy_pool_fn(config, train_records, seed) if config.ccp.enabled else None
    radius = None
    if config.ccp.enabled and config.run.radius_images > 0 and trainer.projection.has_proxies:
        radius = covering.CoveringRadiusMonitor(
            config, train_records, seed, config.run.radius_images,
            trainer.projection.proxy_owner, log_dir=trainer.log_dir)  # None off the chief
    result = trainer.fit(
        builders.train_dataset_fn(config, train_records, seed),
        validation_data=validation,
        proxy_pool_fn=pool,
        callbacks=[radius] if radius is not None else (),
    )
    if radius is not None:  # the training classes' covering radius, epoch by epoch + final
        radius.finish(model, result["best_epoch"] or result["epochs"])
        result["covering_radius"] = radius.series
    return model, loss, result
