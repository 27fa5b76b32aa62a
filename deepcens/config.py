"""``add_deepcens_config``: every config key deepcens adds to detectron2's defaults.

Each key has a default and a one-line comment. Sections follow the package layout; a new
method adds its keys to its own section.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_deepcens_config(cfg: CN) -> None:
    """Declare deepcens' config keys (with defaults) on a detectron2 config, in place."""
    _add_input_config(cfg)
    _add_data_config(cfg)
    _add_resnest_config(cfg)
    _add_anchor_config(cfg)
    _add_dense_config(cfg)
    _add_solver_config(cfg)
    _add_evaluation_config(cfg)
    _add_reliability_config(cfg)
    _add_output_config(cfg)
    _add_efficientcellseg_config(cfg)
    _add_tracking_config(cfg)
    _add_user_data_config(cfg)
    _add_nas_unet_config(cfg)
    _add_dints_config(cfg)
    _add_plugin_config(cfg)  # last: plugin keys may build on everything above


def _add_input_config(cfg: CN) -> None:
    # ---- input / mapper ----------------------------------------------------------------------
    cfg.INPUT.MAPPER = "InstanceDatasetMapper"  # name in deepcens MAPPER_REGISTRY used for training
    cfg.INPUT.INTENSITY_MODE = "dtype"  # how raw pixels become 0..255 floats: dtype | minmax | percentile
    cfg.INPUT.INTENSITY_PERCENTILES = (1.0, 99.8)  # low/high percentiles for INTENSITY_MODE=percentile
    cfg.INPUT.RESIZE_EXACT = ()  # (H, W) every image is resized to, e.g. (1024, 1024) as DeepCeNS; empty = use MIN_SIZE_*
    cfg.INPUT.RANDOM_FLIP_VERTICAL = False  # also flip vertically at random in training


def _add_data_config(cfg: CN) -> None:
    # ---- datasets ----------------------------------------------------------------------------
    cfg.DATASETS.ROOT = "datasets"  # folder that holds EVICAN/, CTC/ and synthetic data
    cfg.DATASETS.AUTO_SYNTHETIC = False  # generate the synthetic EVICAN-shaped set under ROOT if it is missing
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.SEED = 0  # generator seed: same seed, same bytes
    cfg.DATASETS.SYNTHETIC.IMAGES = (24, 8, 8)  # number of train / val / eval-per-difficulty images
    cfg.DATASETS.SYNTHETIC.SIZE = 128  # synthetic image side in pixels
    cfg.DATASETS.BAD_INPUT_POLICY = "fail"  # training data that cannot be read: fail | skip (counted, warned at the end)
    cfg.DATASETS.VAL = ()  # datasets for periodic validation loss / AP during training
    cfg.DATASETS.CTC = CN()
    cfg.DATASETS.CTC.CONFIGURATION = ""  # XB-Net Table 2 data configuration: GT | ST | GT+ST | allGT | allST | allGT+allST; "" = none registered
    cfg.DATASETS.CTC.NAMES = []  # CTC data sets of that configuration, e.g. ["Fluo-N2DH-SIM+"] (registered as ctc_<name>_<configuration>_{train,val})
    cfg.DATASETS.CTC.SEQUENCES = []  # sequences to use, e.g. ["01", "02"]; empty = every sequence present
    cfg.DATASETS.CTC.VAL_FRACTION = 0.1  # GT / ST configurations: share of labelled frames that validate (paper: 10 %)
    cfg.DATASETS.CTC.SEED = 0  # seed of the train / validation frame split
    cfg.DATASETS.CTC.ROOT = ""  # CTC root folder; "" = $DEEPCENS_CTC_ROOT or the default CTC root
    cfg.DATALOADER.DETERMINISTIC = True  # seed the sampler and workers so a resumed run sees the same data order


def _add_resnest_config(cfg: CN) -> None:
    # ---- ResNeSt (+DCN) backbone -------------------------------------------------------------
    cfg.MODEL.RESNEST = CN()
    cfg.MODEL.RESNEST.DEPTH = 200  # 50 | 101 | 200 | 269 | 0 (tiny test trunk: one block per stage)
    cfg.MODEL.RESNEST.RADIX = 2  # split-attention radix
    cfg.MODEL.RESNEST.CARDINALITY = 1  # groups of the split-attention 3x3 conv
    cfg.MODEL.RESNEST.BOTTLENECK_WIDTH = 64  # bottleneck width per group
    cfg.MODEL.RESNEST.STEM_WIDTH = 0  # deep-stem width (stem outputs 2x); 0 = as resnest: 32 for DEPTH 50, 64 for 101/200/269, 16 tiny
    cfg.MODEL.RESNEST.DEEP_STEM = True  # three 3x3 convs instead of one 7x7
    cfg.MODEL.RESNEST.AVG_DOWN = True  # average-pool shortcut downsampling
    cfg.MODEL.RESNEST.AVD = True  # average pooling in the block instead of strided conv
    cfg.MODEL.RESNEST.AVD_FIRST = False  # pool before (True) or after (False) the 3x3 conv
    cfg.MODEL.RESNEST.NORM = "BN"  # BN | SyncBN | naiveSyncBN | GN | FrozenBN
    cfg.MODEL.RESNEST.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # stages returned to FPN
    cfg.MODEL.RESNEST.FREEZE_AT = 0  # 0 = train all; 1 = freeze stem; k = freeze stem and res2..res_k
    cfg.MODEL.RESNEST.DEFORM_ON_PER_STAGE = [False, True, True, True]  # DCN in res2..res5 3x3 convs
    cfg.MODEL.RESNEST.DEFORM_MODULATED = True  # DCN v2 (modulated) instead of v1
    cfg.MODEL.RESNEST.DEFORM_NUM_GROUPS = 1  # offset groups of the deformable conv
    cfg.MODEL.RESNEST.PRETRAINED = ""  # local path / URL of a resnest ImageNet state_dict for the trunk only


def _add_anchor_config(cfg: CN) -> None:
    # ---- small anchors -----------------------------------------------------------------------
    cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES = []  # paper-style flat anchor size list, spread over FPN levels by FlatSizesAnchorGenerator
    cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING = "all_levels"  # all_levels: every size on every level | split: ceil(n/L) consecutive sizes per level (docs/anchors.md)
    # ---- cascade mask branch (DeepcensCascadeROIHeads) -------------------------------------------
    cfg.MODEL.ROI_MASK_HEAD.CASCADE_STAGES = "first"  # mask head trained on the first | last cascade stage's proposals, or one head per stage (all)
    cfg.MODEL.ROI_MASK_HEAD.STAGE_LOSS_WEIGHTS = ()  # CASCADE_STAGES all: mask-loss weight per stage; empty = 1 for every stage


def _add_dense_config(cfg: CN) -> None:
    # ---- dense-prediction methods (U-Nets) ---------------------------------------------------
    cfg.MODEL.DENSE = CN()
    cfg.MODEL.DENSE.NETWORK = "XBNet"  # name in DENSE_NETWORK_REGISTRY
    cfg.MODEL.DENSE.NUM_OUTPUTS = 3  # output channels of the network (3 = background/boundary/cell)
    cfg.MODEL.DENSE.TARGET = "tertiary"  # name in TARGET_REGISTRY: how label images become training targets
    cfg.MODEL.DENSE.LOSS = "xbnet"  # name in DENSE_LOSS_REGISTRY
    cfg.MODEL.DENSE.DECODER = "tertiary"  # name in DECODER_REGISTRY: network output -> Instances
    cfg.MODEL.DENSE.INPUT_CHANNELS = 1  # image channels the network takes (grayscale microscopy = 1)
    cfg.MODEL.DENSE.SIZE_DIVISIBILITY = 32  # inputs are padded to a multiple of this
    cfg.MODEL.DENSE.SLIDING_WINDOW = 0  # tile side for sliding-window inference; 0 = whole image
    cfg.MODEL.DENSE.VOLUME_DECODING = False  # predict on 3D stacks: decode the re-stacked slice probabilities into 3D objects (XB-Net Sec. 5.5)
    cfg.MODEL.DENSE.SLIDING_OVERLAP = 0.25  # overlap between sliding-window tiles (fraction of the tile)
    # tertiary target (XB-Net Algorithm 1) and its decoder
    cfg.MODEL.DENSE.TARGET_DILATION = 2  # dilation iterations making the cell-background boundary (paper: 2 in 2D, 5 for 3D slices; CTC dicts carry their own)
    cfg.MODEL.DENSE.TARGET_EROSION = 2  # erosion iterations / window half-size making cell-cell boundaries (paper: 2)
    cfg.MODEL.DENSE.MIN_OBJECT_SIZE = 20  # decoder: connected components smaller than this (pixels) are dropped
    cfg.MODEL.DENSE.MIN_SCORE = 0.0  # decoder: objects whose mean cell probability is below this are dropped (0 = keep all, paper)
    cfg.MODEL.DENSE.MAX_HOLE_SIZE = 20  # decoder: holes up to this area (pixels) inside a component are filled
    cfg.MODEL.DENSE.GROW_INTO_BOUNDARY = 0  # decoder: grow components into boundary-class pixels by up to this many pixels (0 = off, paper)
    cfg.MODEL.DENSE.POSTPROCESS_PER_DATASET = []  # decoder overrides, [dataset, min_size, max_hole] triples (dataset = registered name or ctc_dataset)
    # dense meta-architecture, losses, networks (XB-Net paper)
    cfg.MODEL.DENSE.CLASS_WEIGHTS = (1.0, 10.0, 5.0)  # cross-entropy weights per class (paper: background 1, boundary 10, cell 5)
    cfg.MODEL.DENSE.JREG_WEIGHT = 1.0  # weight of the J-regularization loss added to cross-entropy (paper: 1, equal weights; 0 = off)
    cfg.MODEL.DENSE.IGNORE_VALUE = 255  # target value excluded from the losses (unlabelled / padded pixels)
    cfg.MODEL.DENSE.INFERENCE_CONTEXT_PAD = 8  # reflection padding around images at inference (paper: 8, matches training)
    cfg.MODEL.DENSE.XBNET = CN()
    cfg.MODEL.DENSE.XBNET.BASE_CHANNELS = 32  # maps at the first stage, doubling per stage (paper: 32)
    cfg.MODEL.DENSE.XBNET.NUM_STAGES = 4  # stride-2 downsamplings (paper: 4, bottleneck at 1/16)
    cfg.MODEL.DENSE.XBNET.NORM = "GN"  # normalisation (paper: GN)
    cfg.MODEL.DENSE.XBNET.GN_GROUPS = 8  # GroupNorm groups (paper: 8)
    cfg.MODEL.DENSE.XBNET.ENTRY_KERNEL = 7  # kernel of the first entry-flow conv (authors' code: 7)
    cfg.MODEL.DENSE.XBNET.DENSE_LAYERS = 4  # growth convs per residual dense block before its fusing conv (5 convs in all)
    cfg.MODEL.DENSE.XBNET.RESIDUAL_SCALE = 0.2  # scale of the residual dense block's output before the skip sum
    cfg.MODEL.DENSE.XBNET.ASPP = True  # ASPP with skip at the bottleneck
    cfg.MODEL.DENSE.XBNET.ASPP_DILATIONS = (6, 12, 18)  # dilated ASPP pathways (plus a 1x1 and an image-pooling pathway)
    cfg.MODEL.DENSE.XBNET.ASPP_POOL_NORM = False  # GroupNorm after the image-pooling pathway's 1x1 conv (authors' code: True, 11,375,683 parameters)
    cfg.MODEL.DENSE.UNET = CN()
    cfg.MODEL.DENSE.UNET.ENCODER = "vgg"  # vgg | resnet50 | resnext50 | xception | densenet201 | resden (paper Sec. 4.3 backbones)
    cfg.MODEL.DENSE.UNET.BASE_CHANNELS = 64  # VGG maps at the first stage, doubling per stage (original U-Net: 64)
    cfg.MODEL.DENSE.UNET.DEPTH = 5  # VGG stages incl. the bottleneck (paper Base: 5, Depth6: 6)
    cfg.MODEL.DENSE.UNET.NORM = "BN"  # BN | GN | SyncBN | naiveSyncBN (paper Base: BN, Groupnorm: GN)
    cfg.MODEL.DENSE.UNET.GN_GROUPS = 8  # GroupNorm groups when NORM is GN
    cfg.MODEL.DENSE.UNET.DOWNSAMPLE = "maxpool"  # maxpool | conv (3x3 stride 2: paper Convstride)
    cfg.MODEL.DENSE.UNET.UPSAMPLE = "upconv"  # upconv (2x2 transposed conv) | pixelshuffle (paper Pixelshuffle)
    cfg.MODEL.DENSE.UNET.ASPP = False  # ASPP at the bottleneck (paper Aspp)
    cfg.MODEL.DENSE.UNET.ASPP_DILATIONS = (6, 12, 18)  # dilated ASPP pathways
    # dense mapper (DenseTargetMapper)
    cfg.INPUT.DENSE = CN()
    cfg.INPUT.DENSE.CROP_SIZE = 256  # random square training crop side; -1 = the image's short side (paper CTC setting); 0 = whole image
    cfg.INPUT.DENSE.DATASET_CROP_NAMES = []  # datasets with their own crop side (ctc_dataset of the dicts), parallel to DATASET_CROP_SIZES
    cfg.INPUT.DENSE.DATASET_CROP_SIZES = []  # crop side of each DATASET_CROP_NAMES entry (same meaning as CROP_SIZE)
    cfg.INPUT.DENSE.CONTEXT_PAD = 8  # reflection padding around training crops, loss ignored there (paper: 8; 16 for 6 stages)
    cfg.INPUT.DENSE.FLIP = True  # random horizontal / vertical flips in training
    cfg.INPUT.DENSE.ROTATE_90 = True  # random 90-degree rotations in training
    cfg.INPUT.DENSE.NORMALIZATION = "sequence_minmax"  # sequence_minmax (XB-Net paper) | frame_percentile (INPUT.INTENSITY_PERCENTILES of each frame -> [0, 1])
    cfg.INPUT.DENSE.AUGMENT = CN()
    cfg.INPUT.DENSE.AUGMENT.PROBABILITY = 0.0  # chance of each augmentation below per training sample (0 = none, as the paper)
    cfg.INPUT.DENSE.AUGMENT.GAMMA = (1.0, 1.0)  # random gamma drawn log-uniformly from (low, high)
    cfg.INPUT.DENSE.AUGMENT.CONTRAST = (1.0, 1.0)  # random contrast factor around the crop mean
    cfg.INPUT.DENSE.AUGMENT.BRIGHTNESS = 0.0  # random additive shift in [-b, b] of the [0, 1] image
    cfg.INPUT.DENSE.AUGMENT.NOISE_STD = 0.0  # additive Gaussian noise, std drawn from [0, this]
    cfg.INPUT.DENSE.AUGMENT.BLUR_SIGMA = 0.0  # Gaussian blur, sigma drawn from [0, this] pixels
    cfg.INPUT.DENSE.AUGMENT.SCALE = (1.0, 1.0)  # random resize of image and target before cropping, factor log-uniform in (low, high)
    # XB-Net training: cosine annealing with warm restarts, universal-training schemes
    cfg.SOLVER.COSINE_RESTARTS = ()  # LR_SCHEDULER_NAME CosineWarmRestarts: iterations where the LR jumps back to BASE_LR (paper: epochs 100, 300, 700)
    cfg.SOLVER.EPOCHS = 0  # > 0: MAX_ITER = EPOCHS x iterations per epoch of the training data (XB-Net Table 3), set at start
    cfg.SOLVER.RESTART_EPOCHS = ()  # with EPOCHS: epochs where the cosine schedule restarts (replaces COSINE_RESTARTS)
    cfg.SOLVER.SCHEME_SEED = 0  # seed of the Shu / Cho dataset order (same on every rank, resumable: derived from the iteration)


def _add_solver_config(cfg: CN) -> None:
    # ---- solver / schedule -------------------------------------------------------------------
    cfg.SOLVER.OPTIMIZER = "SGD"  # SGD | AdamW
    cfg.SOLVER.AMSGRAD = False  # AdamW's AMSGrad variant (torch default False)
    cfg.SOLVER.TRAIN_SCHEME = "Single"  # training loop in TRAIN_LOOP_REGISTRY (Single | Mix | Seq | Fix | Shu | Cho | Acc)
    if "PRECISION" not in cfg.SOLVER.AMP:
        cfg.SOLVER.AMP.PRECISION = "float16"  # autocast dtype with SOLVER.AMP.ENABLED: float16 (CUDA) | bfloat16 (CUDA or CPU)
    cfg.SOLVER.BEST_CHECKPOINT_METRIC = ""  # e.g. "segm/AP": keep model_best.pth by this validation metric; "" = off
    cfg.SOLVER.BEST_CHECKPOINT_MODE = "max"  # max | min for BEST_CHECKPOINT_METRIC
    cfg.SOLVER.BEST_CHECKPOINT_CRITERION = "metric"  # metric | loss (lowest validation loss) | metric_then_loss (metric, ties within TOLERANCE broken by lower validation loss)
    cfg.SOLVER.BEST_CHECKPOINT_TOLERANCE = 0.0  # metric_then_loss: metric differences up to this count as ties
    cfg.SOLVER.BEST_CHECKPOINT_AGGREGATE = "single"  # single: the metric key as given | mean_over_datasets: mean of <dataset>/<metric> over DATASETS.VAL
    cfg.SOLVER.VAL_LOSS_PERIOD = 0  # iterations between validation-loss passes over DATASETS.VAL (0 = off)


def _add_evaluation_config(cfg: CN) -> None:
    # ---- evaluation --------------------------------------------------------------------------
    cfg.TEST.EVALUATOR = "CellEvaluator"  # evaluator class used by tools/train_net.py
    cfg.TEST.DETECTIONS_PER_IMAGE = 500  # COCO maxDets and model cap: cell images hold hundreds of objects
    cfg.TEST.EVAL_PERIOD_EPOCHS = 0  # with SOLVER.EPOCHS: evaluate every this many epochs (replaces EVAL_PERIOD)
    cfg.TEST.EVAL_ON_TRAIN = False  # periodic evaluation also scores DATASETS.TRAIN (keys prefixed train/), as XB-Net Sec. 5.4
    cfg.TEST.CTC_METRICS = True  # also compute CTC SEG / DET / OP_CSB from rendered label images
    cfg.TEST.COCO_BACKEND = "faster_coco_eval"  # faster_coco_eval | pycocotools
    cfg.TEST.MASK_THRESHOLD = 0.5  # probability at which soft masks become binary
    cfg.TEST.CTC_SCORE_THRESHOLD = 0.5  # instances scoring below this are left out of the label images scored by CTC SEG/DET


def _add_reliability_config(cfg: CN) -> None:
    # ---- reliability -------------------------------------------------------------------------
    cfg.SOLVER.STOP_ON_NONFINITE_LOSS = True  # stop with a clear message on NaN/inf loss
    cfg.RUN = CN()
    cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS = False  # allow checkpoints that need arbitrary unpickling (torch.load weights_only=False)
    cfg.RUN.DIST_TIMEOUT_SECONDS = 300  # a rank waiting longer than this on a dead peer exits with an error


def _add_output_config(cfg: CN) -> None:
    # ---- outputs -----------------------------------------------------------------------------
    cfg.RUN.OUTPUT_OVERLAYS = 4  # prediction overlay PNGs written after evaluation in train_net
    cfg.RUN.CONSOLE = "full"  # full: detectron2's console log | progress: progress bar and final table (full log in OUTPUT_DIR/log.txt)


def _add_user_data_config(cfg: CN) -> None:
    # ---- the user's own data sets (deepcens/data/user_datasets.py) -----------------------------
    cfg.DATASETS.FOLDERS = []  # label-image folders to register: list of [name, images_dir, labels_dir]
    cfg.DATASETS.COCO = []  # COCO instances files to register: list of [name, json_file, image_root]


def _add_plugin_config(cfg: CN) -> None:
    # ---- out-of-tree plugins named in $DEEPCENS_PLUGINS declare their own keys (deepcens/plugins.py)
    from deepcens.plugins import add_plugin_configs

    add_plugin_configs(cfg)


def _add_efficientcellseg_config(cfg: CN) -> None:
    # ---- EfficientCellSeg (docs/efficientcellseg.md) -----------------------------------------
    cfg.MODEL.DENSE.ECS = CN()
    cfg.MODEL.DENSE.ECS.DECODER_CHANNELS = (64, 48, 32, 16)  # filters of the four up blocks (paper Table 1; Table 2: (112, 80, 48, 16), (512, 256, 128, 64))
    cfg.MODEL.DENSE.ECS.NUM_NETWORKS = 1  # 1 = segmentation network; 2 = plus a centre-heatmap network (paper Sec. 3.3, MDA231)
    cfg.MODEL.DENSE.ECS.ENCODER_WEIGHTS = ""  # local torchvision efficientnet_b5 state dict for the encoder; "" = random init (ablation model 1)
    cfg.MODEL.DENSE.ECS.NETWORK_SIZE = 384  # side every slice / patch is resized to before the network (paper Sec. 2.1: 384); 0 = no resizing
    cfg.MODEL.DENSE.ECS.PATCHES = (1, 1)  # inference grid (rows, cols) of overlapping square patches per slice (paper TRIC: six patches, 2 x 3)
    cfg.MODEL.DENSE.ECS.CENTRE_SIGMA = 2.0  # Gaussian sigma (pixels) of the centre-heatmap target (not stated)
    cfg.MODEL.DENSE.ECS.DICE_SMOOTH = 1.0  # smoothing term of the Dice loss (not stated)
    cfg.MODEL.DENSE.ECS.FOCAL_ALPHA = 0.25  # focal loss alpha of the heatmap network (Lin et al. default; not stated)
    cfg.MODEL.DENSE.ECS.FOCAL_GAMMA = 2.0  # focal loss gamma (Lin et al. default; not stated)
    cfg.MODEL.DENSE.ECS.FOREGROUND_THRESHOLD = 0.5  # decoders: foreground probability threshold (not stated)
    cfg.MODEL.DENSE.ECS.MARKER_THRESHOLD = 0.5  # centre-marker watershed: heatmap level whose components are markers (not stated)
    cfg.MODEL.DENSE.ECS.MIN_DISTANCE = 5  # distance watershed: minimal distance (pixels) between two markers (distance-map maxima; not stated)
    cfg.MODEL.DENSE.ECS.MIN_OBJECT_SIZE = 20  # decoders: objects smaller than this many pixels (voxels in 3D) are dropped (not stated)
    cfg.MODEL.DENSE.ECS.BN_MOMENTUM = 0.0  # momentum of every BatchNorm layer; 0 = each layer's own (encoder 0.01 as torchvision / Keras, decoder 0.1)
    cfg.MODEL.DENSE.ECS.VOLUME_DECODING = True  # 3D stacks: decode re-stacked slice probabilities into 3D objects (paper Sec. 3)
    cfg.SOLVER.PLATEAU = CN()
    cfg.SOLVER.PLATEAU.METRIC = "val_total_loss"  # LR_SCHEDULER_NAME ReduceLROnPlateau: storage scalar to watch (falls back to training total_loss)
    cfg.SOLVER.PLATEAU.PERIOD = 100  # iterations per plateau step when METRIC is never written (median training loss of the window)
    cfg.SOLVER.PLATEAU.FACTOR = 0.1  # LR multiplier at a plateau (not stated; Keras ReduceLROnPlateau default)
    cfg.SOLVER.PLATEAU.PATIENCE = 10  # metric updates without improvement before the LR drops (not stated; Keras default)
    cfg.SOLVER.PLATEAU.THRESHOLD = 0.0001  # smallest absolute improvement that counts (not stated; Keras min_delta)
    cfg.SOLVER.PLATEAU.MIN_LR = 0.0  # the LR never drops below this (not stated; Keras default)
    cfg.INPUT.ECS = CN()
    cfg.INPUT.ECS.TRANSFORM = "context_pseudocolor"  # name in INPUT_TRANSFORM_REGISTRY: context_pseudocolor | grey (ablation models 1-2)
    cfg.INPUT.ECS.CLAHE_CLIP_LIMIT = 0.01  # skimage CLAHE clip limit of the neighbour slices (not stated; skimage default)
    cfg.INPUT.ECS.CLAHE_TILES = 16  # CLAHE tiles per image side (authors' code: a 16 x 16 grid)
    cfg.INPUT.ECS.ROI_METHOD = "adaptive"  # neighbour ROI threshold: adaptive (authors' code rule) | otsu
    cfg.INPUT.ECS.ROI_BLUR = 8  # box blur side before thresholding the neighbours (authors' code: 8; 0 = off)
    cfg.INPUT.ECS.ROI_START = 0.2  # adaptive rule: first threshold on the [0, 1] neighbour (authors' code: 0.2)
    cfg.INPUT.ECS.ROI_STEP = 0.01  # adaptive rule: threshold increment (authors' code: 0.01)
    cfg.INPUT.ECS.ROI_MAX_STEPS = 30  # adaptive rule: at most this many thresholds (authors' code: 30)
    cfg.INPUT.ECS.ROI_MAX_FRACTION = 0.03  # adaptive rule: raise the threshold until at most this image fraction is ROI (authors' code: 0.03)
    cfg.INPUT.ECS.NORM_PER_CHANNEL = True  # min-max normalise each pseudocolour channel (authors' code) instead of the whole image
    cfg.INPUT.ECS.SCALE = 1.0  # every slice is rescaled by this factor first, in training and inference (not in the paper; reduced CPU config)
    cfg.INPUT.ECS.CACHE_SLICES = 0  # training: keep the transformed image of this many slices per loader worker (deterministic transform); 0 = none
    cfg.INPUT.ECS.PATCH_SIZE = 0  # training: random square patch side before resizing to NETWORK_SIZE; 0 = whole slice (paper TRIC: 873 = six patches)


def _add_tracking_config(cfg: CN) -> None:
    # ---- tracking (linking instances over time into CTC tracks, docs/tracking.md) -------------
    cfg.TRACKING = CN()
    cfg.TRACKING.NAME = "LapTracker"  # TRACKER_REGISTRY name: LapTracker (laptrack LAP linking) | GreedyTracker (XB-Net Sec. 5.6 nearest-centroid rule)
    cfg.TRACKING.COST = "centroid"  # LapTracker cost: centroid (squared centroid distance) | overlap (1 - intersection / smaller area)
    cfg.TRACKING.MAX_DISTANCE = 30.0  # pixels: farthest centroid move linked between consecutive frames (XB-Net Sec. 5.6: tuned per dataset, value not stated)
    cfg.TRACKING.MIN_OVERLAP = 0.2  # COST overlap: least intersection / smaller area that links two objects (links, gaps and divisions)
    cfg.TRACKING.GAP_CLOSING_FRAMES = 2  # most missing frames a track may bridge (0 = no gap closing); the object after a gap names the one before as parent
    cfg.TRACKING.GAP_CLOSING_MAX_DISTANCE = 40.0  # pixels: farthest centroid move across a closed gap
    cfg.TRACKING.DIVISIONS = True  # LapTracker: detect divisions (a mother ending where two daughters start)
    cfg.TRACKING.DIVISION_MAX_DISTANCE = 40.0  # pixels: farthest daughter centroid from the mother's centroid in the frame before
    cfg.TRACKING.EVALUATE = True  # CellEvaluator: link each CTC sequence's predictions (consecutive frames with TRA markers) and report TRA


def _add_nas_unet_config(cfg: CN) -> None:
    # ---- NAS U-Net (Zhu & Meijering 2021) and the marker watershed decoder ---------------------
    cfg.MODEL.NAS = CN()
    cfg.MODEL.NAS.GENOTYPE = ""  # genotype JSON of a derived network; "" = the supernet (search)
    cfg.MODEL.NAS.NUM_DOWN = 3  # n down blocks (n + 2 up blocks)
    cfg.MODEL.NAS.CHANNELS = 16  # maps every basic operation outputs
    cfg.MODEL.NAS.FRAMES = 2  # frames per input (t-1, t): the ConvLSTM unroll length
    cfg.MODEL.NAS.GN_GROUPS = 8  # GroupNorm groups after every basic operation
    cfg.MODEL.NAS.DILATION = 2  # dilation of the atrous basic operations
    cfg.MODEL.NAS.SE_REDUCTION = 4  # squeeze-and-excitation channel reduction
    cfg.MODEL.NAS.SHUFFLE_GROUPS = 4  # groups of the shuffle convolution
    cfg.MODEL.NAS.BORDER_WEIGHT_W0 = 10.0  # U-Net border weight map w0
    cfg.MODEL.NAS.BORDER_WEIGHT_SIGMA = 5.0  # U-Net border weight map sigma (pixels)
    cfg.MODEL.NAS.CLASS_BALANCE = True  # U-Net weight map: add class-frequency balancing weights w_c
    cfg.MODEL.NAS.MARKER_SOURCE = "erosion"  # markers from eroded instances (erosion) or TRA markers (tra)
    cfg.MODEL.NAS.MARKER_EROSION = 4  # erosion depth (pixels) of instance markers; small cells keep their inner half
    cfg.MODEL.NAS.GAP_DISTANCE = 3  # 4 classes: background pixels within this distance of two cells are gap
    cfg.MODEL.NAS.MARKER_LOSS_WEIGHT = 1.0  # weight of the marker BCE in the summed loss
    cfg.MODEL.NAS.SEARCH = CN()
    cfg.MODEL.NAS.SEARCH.MODE = "binary"  # binary (ProxylessNAS paths) | all_paths (DARTS mixtures)
    cfg.MODEL.NAS.SEARCH.VAL_FRACTION = 0.4  # share of the training frames for the architecture steps
    cfg.MODEL.NAS.SEARCH.SPLIT_SEED = 0  # seed of the train / validation frame split
    cfg.MODEL.NAS.SEARCH.ARCH_LR = 0.0003  # Adam learning rate of the architecture parameters
    cfg.MODEL.NAS.SEARCH.ARCH_WEIGHT_DECAY = 0.0001  # Adam weight decay of the architecture parameters
    cfg.MODEL.NAS.SEARCH.PATIENCE_EPOCHS = 60  # stop when the derived architecture is unchanged this many epochs
    cfg.MODEL.NAS.SEARCH.WARMUP_EPOCHS = 0  # epochs of weight steps only before the alternation starts
    cfg.MODEL.NAS.SEARCH.LOG_PERIOD = 20  # iterations between architecture-weight scalars in metrics.json
    cfg.INPUT.NAS = CN()
    cfg.INPUT.NAS.REVERSE_PAIR = True  # random reversal of the frame pair in training
    cfg.INPUT.NAS.AFFINE_PROB = 0.5  # probability of a random affine transform of a training crop
    cfg.INPUT.NAS.AFFINE_ROTATION = 15.0  # max rotation (degrees) of the affine transform
    cfg.INPUT.NAS.AFFINE_SCALE = (0.9, 1.1)  # scale range of the affine transform
    cfg.INPUT.NAS.AFFINE_SHEAR = 0.1  # max shear of the affine transform
    cfg.INPUT.NAS.ELASTIC_PROB = 0.5  # probability of a random elastic deformation of a training crop
    cfg.INPUT.NAS.ELASTIC_ALPHA = 3.0  # max displacement (pixels) of the elastic deformation
    cfg.INPUT.NAS.ELASTIC_SIGMA = 10.0  # smoothness (Gaussian sigma, pixels) of the elastic displacement field
    cfg.MODEL.DENSE.WATERSHED = CN()
    cfg.MODEL.DENSE.WATERSHED.FOREGROUND_CHANNELS = (1,)  # probability channels summed into the cell probability
    cfg.MODEL.DENSE.WATERSHED.MARKER_CHANNEL = -1  # probability channel of the markers (seeds)
    cfg.MODEL.DENSE.WATERSHED.FOREGROUND_THRESHOLD = 0.5  # cell mask: cell probability above this
    cfg.MODEL.DENSE.WATERSHED.MARKER_THRESHOLD = 0.5  # seeds: marker probability above this
    cfg.MODEL.DENSE.WATERSHED.MIN_SEED_SIZE = 5  # seeds smaller than this (pixels) are dropped
    cfg.MODEL.DENSE.WATERSHED.KEEP_UNSEEDED = True  # cell-mask components without a seed become instances of their own


def _add_dints_config(cfg: CN) -> None:
    # ---- 2D DiNTS, MONAI baselines, cell-segmentation folders (docs/dints.md) -----------------
    cfg.DATASETS.CELLSEG = CN()
    cfg.DATASETS.CELLSEG.FOLDERS = [["neurips_cellseg", "datasets/neurips2022_cellseg"], ["dsb2018", "datasets/dsb2018"]]  # [prefix, folder] pairs (images/ + labels/, tools/prepare_data.py folders) registered as prefix_{all,train,val,train_weights,train_arch}
    cfg.DATASETS.CELLSEG.VAL_FRACTION = 0.1  # held-back part per folder (paper Table 2: 900:100 images)
    cfg.DATASETS.CELLSEG.SEED = 0  # seed of the train / val shuffle
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY = CN()
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY.TARGET_BOUNDARY_RADIUS = 1  # target: inner object boundaries dilated by a disk of this radius (challenge baseline: 1)
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY.TARGET_MIN_INTERIOR_SIZE = 16  # target: interior fragments below this many pixels become background (challenge baseline: 16)
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY.THRESHOLD = 0.5  # decoder: a pixel is interior when its interior probability exceeds this (challenge baseline: 0.5)
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY.MIN_OBJECT_SIZE = 16  # decoder: interior components below this many pixels are removed (challenge baseline: 16)
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY.MAX_HOLE_SIZE = 64  # decoder: holes of at most this area inside interior components are filled (challenge baseline: scikit-image default 64)
    cfg.MODEL.DENSE.INTERIOR_BOUNDARY.GROWTH = 2  # decoder: components grow by up to this many pixels into interior/boundary-class pixels (0 = off)
    cfg.MODEL.DENSE.MONAI = CN()
    cfg.MODEL.DENSE.MONAI.ROI_SIZE = 224  # sliding-window patch at inference; the training patch (paper Table 2: 224 or 384); 0 = whole image
    cfg.MODEL.DENSE.MONAI.SW_OVERLAP = 0.25  # overlap of MONAI sliding_window_inference windows (not stated; MONAI default)
    cfg.MODEL.DENSE.MONAI.SW_BATCH_SIZE = 4  # windows per forward pass in sliding-window inference (not stated; challenge baseline 4)
    cfg.MODEL.DENSE.MONAI.UNET_CHANNELS = (16, 32, 64, 128, 256)  # MONAI UNet channels (gives the paper's 1,626,072 parameters, Table 3)
    cfg.MODEL.DENSE.MONAI.UNET_STRIDES = (2, 2, 2, 2)  # MONAI UNet strides (challenge baseline)
    cfg.MODEL.DENSE.MONAI.UNET_NUM_RES_UNITS = 2  # MONAI UNet residual units per block (challenge baseline)
    cfg.MODEL.DENSE.MONAI.SEGRESNET_INIT_FILTERS = 8  # MONAI SegResNet initial filters (MONAI default; gives Table 3 counts)
    cfg.MODEL.DENSE.MONAI.SEGRESNET_BLOCKS_DOWN = (1, 2, 2, 4)  # MONAI SegResNet residual blocks per level (MONAI default)
    cfg.MODEL.DENSE.MONAI.SEGRESNET_UPSAMPLE = "deconv"  # deconv | nontrainable | pixelshuffle (paper Tables 3-4)
    cfg.MODEL.DENSE.DINTS = CN()
    cfg.MODEL.DENSE.DINTS.CHANNEL_MUL = 1.0  # channel multiplier of the 32/64/128/256 maps (paper "Mul": 0.5 or 1)
    cfg.MODEL.DENSE.DINTS.NUM_BLOCKS = 8  # blocks of the topology (paper "Depth": 8 or 12)
    cfg.MODEL.DENSE.DINTS.NUM_DEPTHS = 3  # resolution levels (not stated; MONAI default 3, gives Table 3 counts within 1.5 %)
    cfg.MODEL.DENSE.DINTS.USE_DOWNSAMPLE = True  # stem downsamples by 2 before the topology (MONAI default)
    cfg.MODEL.DENSE.DINTS.CELL = "monai"  # monai: skip + 3x3 conv | six_ops: the paper's six 2D operations (Sec. 2.2)
    cfg.MODEL.DENSE.DINTS.ARCH_FILE = ""  # architecture JSON decoded by the search, for MODEL.DENSE.NETWORK DiNTS2D
    cfg.SOLVER.DINTS_SEARCH = CN()
    cfg.SOLVER.DINTS_SEARCH.WARMUP_ITERS = 0  # iterations training weights only before architecture updates start (MONAI tutorial: half the search)
    cfg.SOLVER.DINTS_SEARCH.ARCH_LR = 0.001  # Adam learning rate of the path and cell-operation parameters (MONAI tutorial)
    cfg.SOLVER.DINTS_SEARCH.ARCH_BETAS = (0.5, 0.999)  # Adam betas of the architecture optimisers (MONAI tutorial)
    cfg.SOLVER.DINTS_SEARCH.RAM_COST_FACTOR = 0.8  # target fraction of the full supernet's estimated RAM (MONAI tutorial)
    cfg.SOLVER.DINTS_SEARCH.TOPOLOGY_WEIGHT = 0.001  # weight of the topology entropy loss (MONAI tutorial)
    cfg.SOLVER.DINTS_SEARCH.ARCH_DATASETS = ()  # datasets feeding the architecture steps; empty = DATASETS.TRAIN
    cfg.SOLVER.DINTS_SEARCH.DECODE_PERIOD = 500  # decode and write OUTPUT_DIR/arch_code.json every this many iterations (and at the end)
    cfg.SOLVER.EARLY_STOP = CN()
    cfg.SOLVER.EARLY_STOP.PATIENCE = 0  # checks without a lower validation loss before training stops (paper Table 2: 100 epochs); 0 = off
    cfg.SOLVER.EARLY_STOP.PERIOD = 100  # iterations between validation-loss checks over DATASETS.VAL (one check = one "epoch")
