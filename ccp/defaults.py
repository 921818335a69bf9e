"""Every default of the method and the protocol, in one place (plain constants, no TensorFlow).

The library's constructors and the command line (``experiments/config.py``) both read these, so
a default is written once. Values follow SPEC §4-§6; where SPEC is silent the value is the
library's long-standing one and says so. ``import ccp.defaults`` imports nothing heavy, so the
command line can validate flags before TensorFlow starts.
"""

# --- Embedding model (SPEC §1) -----------------------------------------------------------------
EMBEDDING_SIZE = 128            # D of the MLRC protocol (512 in the conventional one)
POOLING = "avg"

# --- Losses (SPEC §4 and §10: the reference code's defaults) ------------------------------------
CONTRASTIVE_POS_MARGIN = 0.0    # C2 m+
CONTRASTIVE_NEG_MARGIN = 0.5    # C2 m-
COSINE_MARGIN = 0.5             # C1
TRIPLET_MARGIN = 0.1
MS_ALPHA = 2.0
MS_BETA = 40.0
MS_BASE = 0.5                   # multi-similarity lambda
MS_MINING = False               # the reference applies no pair mining
MS_MINING_EPSILON = 0.1
MARGIN_ALPHA = 0.2              # margin loss (Wu et al.)
MARGIN_BETA_INIT = 1.2
PROXY_ANCHOR_MARGIN = 0.1       # delta
PROXY_ANCHOR_ALPHA = 32.0
PROXY_NCA_TEMPERATURE = 0.1
PROXY_NCA_PROXIES_PER_CLASS = 1  # K; the reference's proxy_per_class (SPEC §4c)
SOFT_TRIPLE_LAMBDA = 20.0
SOFT_TRIPLE_GAMMA = 0.1
SOFT_TRIPLE_TAU = 0.2
SOFT_TRIPLE_MARGIN = 0.01       # delta
SOFT_TRIPLE_CENTERS = 10
CIRCLE_MARGIN = 0.4             # Circle loss m (the paper's DML setting)
CIRCLE_GAMMA = 80.0
FASTAP_NUM_BINS = 10
RLL_BOUNDARY = 1.2              # ranked-list loss alpha
RLL_MARGIN = 0.4                # m
RLL_NEG_TEMPERATURE = 10.0      # T_n
RLL_POS_TEMPERATURE = 0.0       # T_p
RLL_NEG_WEIGHT = 1.0            # lambda
DISTANCE = "euclidean"          # or "squared_euclidean", "cosine" (-x.y), "snr"
NORMALIZATION = "lipschitz"     # of embeddings and proxies in every loss; "l2": x / ||x|| (the
                                #   reference's lipschitz_cont: false, SPEC §4c)
SNR_REGULARIZATION_WEIGHT = 1e-3
RHO_P_SWITCH = 0.0              # rho-regularization off; the paper's value is 0.2
RHO_P_SWITCH_PAPER = 0.2
# The reference's other losses, miners and switches (SPEC §4b, issue 15).
NORMALIZED_SOFTMAX_TEMPERATURE = 0.11   # the reference's XEnt lambda_softmax
VIRTUAL_SOFTMAX_TEMPERATURE = 0.11
VIRTUAL_SOFTMAX_MARGIN = 0.0            # ProxyNCA's delta
PROXY_SYNTHESIS_ALPHA = 0.4             # lambda ~ Beta(alpha, alpha)
PROXY_SYNTHESIS_MU = 1.0                # synthetic pairs = round(B * mu)
MDR_WEIGHT = 1.0
MDR_LEVEL_PENALTY = 0.01
MDR_MOMENTUM = 0.9
MDR_LEVELS = (-3.0, 0.0, 3.0)
MINER = None                            # or a name in ccp.losses.miners.REGISTRY
DISTANCE_WEIGHTED_CUTOFF = 0.5
DISTANCE_WEIGHTED_NONZERO_LOSS_CUTOFF = 1.4
AVERAGE_NONZERO_ONLY = True             # False: average over all terms

# --- CCP (SPEC §4 "CCP" and §5) -----------------------------------------------------------------
CCP_PROXIES_PER_CLASS = 8       # K
CCP_POOL_SIZE = 12              # b
CCP_LAMBDA = 2e-4               # lambda_0 of the proximal term
CCP_DECAY = 1.0                 # lambda_t = lambda_0 * decay**t for t >= 1
CCP_PAIR_WEIGHT = 0.1           # loss_weight of the batch-vs-batch term
CCP_PROXY_WEIGHT = 1.0          # ccp_weight of the batch-vs-proxy term
CCP_PATIENCE = 3                # epochs without improvement that end a problem instance
CCP_MIN_EPOCHS_PER_INSTANCE = 1  # min_iterations
CCP_MIN_DELTA = 1e-5            # instance improvement: MAP@R > best + 1e-5 (SPEC §5.2)
CCP_MONITOR_LAG = 0             # 1 reproduces the reference's one-epoch lag
CCP_MONITOR = "map_at_r"        # the metric CCP's schedule follows (the reference: MAP@R)
CCP_PROJECTION_EVERY_STEPS = 0  # N > 0: project after every N training-phase steps (the
                                #   reference's step_at_batch); 0: at instance ends
CCP_FIXED_INTERVAL = 0          # N > 0: project every N epochs, no instance early stopping (the
                                #   reference's ccp_iterations); 0: at instance ends

# --- Cross-batch memory (SPEC §4 "XBM") ---------------------------------------------------------
XBM_MEMORY_BATCHES = 25         # CUB/Cars196 memory in batches
XBM_START_AT = 1000             # steps before the memory term starts
XBM_BATCH_WEIGHT = 1.0
XBM_MEMORY_WEIGHT = 1.0

# --- Batches and augmentation (SPEC §6) ---------------------------------------------------------
CLASSES_PER_BATCH = 8
SAMPLES_PER_CLASS = 4
MIN_CROP_AREA = 0.16
IMAGE_SIZE = 227                # ImageNet backbones
SMALL_CNN_IMAGE_SIZE = 32

# --- Optimizer and gradient transforms (SPEC §6) ------------------------------------------------
LEARNING_RATE = 1e-5
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999             # the reference code (the paper text says 0.99)
ADAM_EPSILON = 1e-7
WEIGHT_DECAY = 1e-4
CLIP_NORM = 10.0
CLIP_VALUE = 10.0
PROXY_LR_MULTIPLIER = 1.0       # CCP uses none; the proxy baselines use 100 (SPEC §4)
# Other optimizers of the reference (issue 15): its config defaults.
OPTIMIZER = "adam"
SGD_MOMENTUM = 0.0
SGD_NESTEROV = False
RMSPROP_RHO = 0.9
RMSPROP_MOMENTUM = 0.0

# --- Learning-rate schedules --------------------------------------------------------------------
LR_SCHEDULE = "constant"        # MLRC configs (SPEC §6)
# Exponential decay (SPEC is silent; the library's values): lr * rate**(step / steps).
LR_EXPONENTIAL_RATE = 0.1
LR_DECAY_STEPS = 10000
LR_STAIRCASE = True
# Reduce-on-plateau of the conventional protocol (SPEC §6): factor 0.5, patience 4 (small data
# sets; 3 for SOP/In-shop), min 1e-6. min_delta and cooldown are the library's (SPEC is silent).
LR_PLATEAU_FACTOR = 0.5
LR_PLATEAU_PATIENCE = 4
LR_PLATEAU_MIN_DELTA = 1e-3
LR_PLATEAU_COOLDOWN = 2
MIN_LEARNING_RATE = 1e-6

# --- Training loop and early stopping (SPEC §5.5, §6) -------------------------------------------
STEPS_PER_EPOCH = 25            # CUB/Cars196 (250 for SOP/In-shop)
# The run ends by early stopping (SPEC §5.5); the epoch cap only guards against a run that
# never stops, so it must not bind before patience does.
MAX_EPOCHS = 10000
EARLY_STOPPING_PATIENCE = 60    # evaluations of the validation MAP@R
EARLY_STOPPING_MIN_DELTA = 1e-5
WARMUP_EPOCHS = 0
WARMUP_LR_MULTIPLIER = 1.0      # the warm-up's learning rate = LEARNING_RATE x this
WARMUP_ALL_LAYERS = False       # the reference's freeze_during_warmup=True: head (+ loss) only
MAX_CHECKPOINTS = 2

# --- Evaluation (SPEC §8) -----------------------------------------------------------------------
RECALL_AT = (1, 2, 4, 8)
EVAL_BATCH_SIZE = 128

# --- Protocol (SPEC §6) -------------------------------------------------------------------------
FOLDS = 4                       # MLRC; 1 = conventional
REPEATS = 1
