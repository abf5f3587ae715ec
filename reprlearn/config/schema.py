"""The run configuration's schema: five typed sections (and `search`), each constraint beside its field.

A field made with `choice(default, options)` accepts only those options; one made with
`positive(default)` only values > 0 (or None where the type allows it). `reprlearn.config.rules`
reads these marks and adds the checks that span several fields; `reprlearn.config.io` reads YAML
and `--set` overrides into these classes.

Example:
    cfg = Config()
    cfg.train.epochs                                   # 5
    dataclasses.fields(TrainConfig)[0].metadata         # {"positive": True}
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from reprlearn.config.losses import LOSS_TRAITS, PAIR_MINERS
from reprlearn.config.self_supervised import METHODS as SSL_METHODS
from reprlearn.data.augment import AUGMENTATIONS
from reprlearn.data.decode import RESIZE_MODES
from reprlearn.data.protocols import PROTOCOLS
from reprlearn.ops.distances import ALIASES, METRICS

# What the validation callbacks log every epoch: RetrievalValidation (one tower), CrossViewValidation (two towers).
TUNING_OBJECTIVES = ("val_map_at_r", "val_precision_at_1", "val_recall_at_1", "val_recall_at_1pct")
TWO_TOWER_OBJECTIVES = ("val_recall_at_1", "val_recall_at_1pct")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
# Verifier designs (reprlearn.models.verifiers builds them).
VERIFIERS = ("siamese_head", "two_channel")



def choice(default, options: typing.Iterable):
    """A field whose value must be one of `options`."""
    return field(default=default, metadata={"choices": tuple(options)})


def positive(default):
    """A field whose value must be > 0 (None passes where the field is Optional)."""
    return field(default=default, metadata={"positive": True})


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    protocol: str = choice("seen-classes", PROTOCOLS)
    data_dir: typing.Optional[str] = None
    # unseen-classes only: the classes to train on; the rest are the test classes.
    # None means the lower half of the class ids (Fashion-MNIST: 0-4).
    train_classes: typing.Optional[list[int]] = None
    validation_fraction: float = 0.1
    # > 0: validate on this many whole training classes held out from training (class-disjoint, like the
    # unseen-classes test) instead of a stratified share of every class.
    validation_classes: int = 0
    # Training batches: none | light | strong (shifts, rotations, contrast; left-right flips only for data
    # whose classes survive a mirror, see reprlearn.data.augment) | simclr | byol (random resized crop, flip, colour
    # jitter, grey, blur, solarize: reprlearn.data.recipes; a P×K batch takes the recipe's first view).
    # Never applied to validation or test images. model.kind: self_supervised needs simclr or byol.
    augment: str = choice("none", AUGMENTATIONS)
    # simclr | byol only: the recipe's ops set one by one, e.g. {crop_scale: [0.2, 1.0], hue: 0.0,
    # blur_probability: [1.0, 0.1]} (a two-item list of a number sets each view; see docs/self-supervised.md).
    augment_options: dict = field(default_factory=dict)
    # P×K training batches: classes (K images of each of P classes) | views (K augmented views of each of P
    # images, labelled by image: self-supervised, the training labels are not used; needs data.augment).
    positives: str = choice("classes", ("classes", "views"))
    max_train: typing.Optional[int] = positive(None)
    max_test: typing.Optional[int] = positive(None)
    seed: int = 0
    # Streamed sources (folder:PATH, csv:FILE): the size every image is decoded to, [height, width] (None: the
    # files' own size, which must then be one size), the channels (None: 3 if any file has colour, else 1), how
    # a differently shaped image fits (pad: letterbox; crop: centre crop, a random one for training with
    # data.augment; stretch), and what an unusable file does (skip: listed in run.json and the report; error).
    image_size: typing.Optional[list[int]] = None
    channels: typing.Optional[int] = choice(None, (None, 1, 3))
    resize: str = choice("pad", RESIZE_MODES)
    on_bad_image: str = choice("skip", ("skip", "error"))
    # Streamed sources: none (decode every batch) | memory (decode the train and validation files once into RAM)
    # | a folder (the same, memory-mapped from DIR/<fingerprint>.npy, reused by later runs on the same files).
    cache: str = "none"
    # model.kind: two_tower only (data.name: csv:PAIRS.csv or folder:DIR of matched pairs): data.image_size and
    # data.channels size the query view, these the reference view (None: the reference files' own).
    reference_size: typing.Optional[list[int]] = None
    reference_channels: typing.Optional[int] = choice(None, (None, 1, 3))


@dataclass
class ModelConfig:
    # embedding: a metric-learning tower; autoencoder / vae: trained without labels (tower picks dense or conv);
    # verifier: a pair model trained with binary cross-entropy on balanced pairs (loss.* unused), see model.verifier.
    # two_tower: a query tower and a reference tower trained on matched pairs of two views (street photo ↔ overhead
    # image, sketch ↔ photo), see model.share.
    # self_supervised: the tower trained without labels on two augmented views of each image (model.method); the
    # run keeps the tower alone, an ordinary embedding run for embed, index, export and model.init_from.
    kind: str = choice("embedding", ("embedding", "autoencoder", "vae", "verifier", "two_tower", "self_supervised"))
    tower: str = choice("conv", ("mlp", "conv", "backbone"))
    embedding_dim: int = positive(64)
    l2_normalize: bool = True
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    filters: list[int] = field(default_factory=lambda: [32, 64])
    dense: int = positive(128)
    batch_norm: bool = False
    dropout: float = 0.0
    # model.tower: backbone: any keras.applications class (ResNet50, EfficientNetV2B0, MobileNetV3Small,
    # ConvNeXtTiny, ...) with its own preprocessing inside the tower; weights imagenet (Keras downloads and caches
    # the file once), none (random) or the path of a weights file. Streamed sources feed it data.image_size;
    # in-memory arrays are resized inside the tower to backbone_image_size.
    backbone: str = "MobileNetV2"
    backbone_weights: typing.Optional[str] = None
    backbone_image_size: int = positive(96)
    pooling: str = choice("avg", ("avg", "max", "gem"))   # gem: generalized mean, exponent learnt (init 3)
    # BatchNorm layers of the backbone keep their ImageNet statistics (inference mode) while the rest fine-tunes.
    freeze_batchnorm: bool = False
    # Which backbone layers train: None freezes a pretrained backbone (a random one trains whole), a layer name
    # trains that layer and all after it, all trains every layer.
    fine_tune_from: typing.Optional[str] = None
    # Transfer: start from a trained run's tower (RUN/model.keras): same-named, same-shaped layers are copied
    # (report.json lists them); with freeze they stay fixed and only the embedding head (embedding_dense) trains
    # (a verifier: the whole tower stays fixed and only the verifier's head trains).
    init_from: typing.Optional[str] = None
    freeze: bool = False
    # Without freeze: the copied layers train at this share of train.learning_rate (fine-tuning a pretrained
    # tower gently, e.g. 0.1), everything else at the full rate.
    init_learning_rate_factor: float = 1.0
    # verifier only: siamese_head (one shared tower, an MLP on [|a-b|, a*b], a sigmoid; frozen by model.freeze or
    # trained end to end) | two_channel (the images stacked on the channel axis into one network, a sigmoid).
    verifier: str = choice("siamese_head", VERIFIERS)
    verifier_hidden: int = positive(64)  # the verifier head's hidden ReLU width
    # Joint embedding (embedding towers): the exported vector joins these tower layers' features (feature maps
    # power-normalised, sign(x)·|x|^joint_power, then average-pooled to joint_grid × joint_grid) with the head,
    # each part unit-length times its weight
    # (joint_weights: one per layer, then the head's; [] = all 1); joint_dim caps the size with a PCA fit
    # on training images. [] exports the head alone. The name `orientations` joins gradient orientation histograms
    # of the input image (nothing learnt; orientation_bins sectors, orientation_cells × orientation_cells cells,
    # pooled before joint_power).
    joint_layers: list[str] = field(default_factory=list)
    joint_grid: int = positive(3)
    joint_power: float = 0.5
    joint_weights: list[float] = field(default_factory=list)
    joint_dim: typing.Optional[int] = positive(None)
    orientation_bins: int = positive(12)
    orientation_cells: int = positive(4)
    # two_tower only. share: none (each tower its own weights) | head (own trunks, one embedding head) | all (one
    # tower for both views: the Siamese baseline, views of one size and channel count). reference_tower: the
    # reference tower's kind (None: model.tower), with the same widths. polar_size [height, width]: the reference
    # tower starts with the polar transform of the overhead image to a strip of that size. circular: conv towers
    # of panoramas (the query, and the reference after a polar transform) wrap their convolutions round the width
    # and pool over it (circular_pooling: avg, max, or fourier: the magnitudes of the Fourier transform along the
    # width, which keep how features are spaced round the panorama), so the heading a panorama starts at changes
    # nothing.
    share: str = choice("none", ("none", "head", "all"))
    reference_tower: typing.Optional[str] = choice(None, (None, "mlp", "conv", "backbone"))
    polar_size: typing.Optional[list[int]] = None
    circular: bool = False
    circular_pooling: str = choice("fourier", ("avg", "max", "fourier"))
    # self_supervised only: the method (simclr, moco, moco_v3, byol, simsiam, barlow_twins, vicreg), its heads'
    # widths (hidden..., output; null: the method's default, see docs/self-supervised.md; predictor [] for none),
    # NT-Xent / InfoNCE τ and the EMA's m (null: the method's).
    method: str = choice("simclr", SSL_METHODS)
    projector: typing.Optional[list[int]] = None
    predictor: typing.Optional[list[int]] = None
    temperature: typing.Optional[float] = positive(None)
    momentum: typing.Optional[float] = None
    # autoencoder / vae only.
    code_dim: int = positive(32)
    decoder: str = choice("unpool", ("unpool", "transpose", "upsample"))  # conv autoencoder
    linear: bool = False             # dense autoencoder without hidden layers or activations (the PCA check)
    likelihood: str = choice("bernoulli", ("bernoulli", "gaussian"))    # vae: bernoulli | gaussian
    beta: float = positive(1.0)                # vae: KL weight


@dataclass
class LossConfig:
    # contrastive: in-batch pairs of P×K batches; pair_contrastive: a Siamese pair model on balanced pairs;
    # triplet_semihard / triplet_hard / triplet_batch_all / lifted_struct: in-batch mining on P×K batches;
    # am_softmax: the tower trained through cosine class weights (margin m = loss.margin, scale loss.scale);
    # supervised_contrastive: SupCon, a softmax over -loss.scale x distance (NT-Xent with data.positives: views);
    # multi_similarity, circle, ntxent: pytorch-metric-learning's pair losses; proxy_anchor, arcface: through
    # cosine class weights (proxies) like am_softmax.
    name: str = choice("contrastive", tuple(LOSS_TRAITS))  # one of reprlearn.config.losses.LOSS_TRAITS
    margin: float = 0.5
    distance: str = choice("L2", METRICS + tuple(ALIASES))       # L2 | squared-L2 | angular (alias: cosine)
    # Under a multi-replica strategy: mine the global batch (all replicas) rather than each replica's slice.
    cross_replica: bool = True
    # am_softmax: s in s·(cos − m·onehot(y)) (loss.margin is m); arcface: s; supervised_contrastive: 1 / temperature
    scale: float = positive(30.0)
    # am_softmax only: > 0 adds JRD's joint representation similarity over `jrd_layers` with this weight α.
    jrd_weight: float = 0.0
    # Tower layer names, plus "logits" for the classifier's cosines; [] means the last pooled conv block
    # ("features"; an MLP: the layer under the head), the embedding and the logits.
    jrd_layers: list[str] = field(default_factory=list)
    # P×K losses: > 0 adds a dense decoder from the embedding back to the pixels (MSE on [0, 1]) with this
    # weight, so the embedding keeps what it needs to redraw the image, not only what separates the classes.
    reconstruction_weight: float = 0.0
    # triplet_hard only: softplus(D_ap - D_an) instead of the margin hinge.
    soft: bool = False
    # Pair losses (contrastive, supervised_contrastive, multi_similarity, circle, ntxent): score only the pairs
    # Multi-Similarity's miner keeps (slack loss.epsilon), as pytorch-metric-learning's miners do.
    miner: str = choice("none", PAIR_MINERS)
    epsilon: float = 0.1
    # Keys only some losses take; left out (null), they are the loss's own default (the resolved config in a run
    # folder records the number): multi_similarity alpha 2, beta 50, base 0.5; proxy_anchor alpha 32, its class
    # weights (the proxies) at proxy_learning_rate_factor 100 × the learning rate; circle gamma 80; ntxent
    # temperature 0.07; arcface sub_centers 1. Each loss also has its own margin, scale and distance defaults
    # (circle margin 0.4; proxy_anchor margin 0.1; arcface margin 0.5 rad, scale 64; all five: angular).
    alpha: typing.Optional[float] = positive(None)
    beta: typing.Optional[float] = positive(None)
    base: typing.Optional[float] = None
    gamma: typing.Optional[float] = positive(None)
    temperature: typing.Optional[float] = positive(None)
    sub_centers: typing.Optional[int] = positive(None)
    proxy_learning_rate_factor: typing.Optional[float] = positive(None)
    # info_nce only: learn τ (through log τ, 1/τ clipped at 100), starting from loss.temperature.
    learn_temperature: bool = False


@dataclass
class TrainConfig:
    epochs: int = positive(5)
    steps_per_epoch: int = positive(200)
    classes_per_batch: int = positive(8)
    examples_per_class: int = positive(16)
    pair_batch_size: int = positive(128)
    learning_rate: float = positive(1e-3)
    # cosine decays to 0 over epochs × steps_per_epoch
    lr_schedule: str = choice("constant", ("constant", "cosine"))
    jit_compile: bool = False
    # autoencoder / vae runs: uniformly drawn images per batch; self_supervised: distinct images (two views each).
    batch_size: int = positive(128)
    # Negatives beyond the batch. self_supervised (simclr, moco): a FIFO of earlier projections (null: the
    # method's default, 4,096 for moco and none for simclr). embedding runs with a pair loss (contrastive,
    # supervised_contrastive, multi_similarity, circle, ntxent): a cross-batch memory (XBM) of the last
    # memory_size embeddings (the batch's own included), scored from train.memory_warmup steps on.
    memory_size: typing.Optional[int] = None
    memory_warmup: int = 0
    seed: int = 0
    # auto | one_device | mirrored | multi_worker (see reprlearn.training.strategies); batch sizes are global.
    strategy: str = choice("auto", STRATEGIES)
    mixed_precision: str = choice("none", PRECISIONS)  # none | mixed_float16 | mixed_bfloat16 (embeddings stay float32)
    # The weights a run exports: those of the last epoch, or of the epoch with the best validation MAP@R (a
    # verifier: ROC AUC on validation pairs) (the validation split: held-out training classes with
    # data.validation_classes; never the test split).
    keep: str = choice("last", ("last", "best"))  # last | best
    # Backbone towers: train the head alone over the frozen backbone this many epochs first, then from
    # model.fine_tune_from (all when unset) with a fresh optimizer, the backbone at
    # model.init_learning_rate_factor of the rate (its BatchNorm layers stay in inference mode).
    frozen_epochs: int = 0


@dataclass
class EvalConfig:
    verification_pairs: int = positive(20000)
    projection: str = choice("tsne", ("tsne", "pca"))
    projection_points: int = positive(2000)
    projector_points: int = positive(2000)
    grid_queries: int = positive(8)
    grid_neighbours: int = positive(8)
    # two_tower runs: also train one shared tower (model.share: all, the reference view resized to the query's size
    # and channels) with the same loss and budget, and report it beside the two towers.
    shared_baseline: bool = True


@dataclass
class SearchConfig:
    """`reprlearn tune` only. Ranges are `[low, high]`, sampled log-uniformly; lists are choices.
    The search space is what the section lists: a hyperparameter left out (or `[]`) stays at the
    config's own value, and a search with nothing listed is an error."""
    margin: list[float] = field(default_factory=list)
    embedding_dim: list[int] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    loss: list[str] = field(default_factory=list)
    classes_per_batch: list[int] = field(default_factory=list)
    examples_per_class: list[int] = field(default_factory=list)
    # Open-set keys, each a list of choices: loss.jrd_weight (a classifier base loss), loss.reconstruction_weight,
    # model.joint_layers (each choice the layer names joined by "+"; "" is the head alone), data.augment.
    jrd_weight: list[float] = field(default_factory=list)
    reconstruction_weight: list[float] = field(default_factory=list)
    joint_layers: list[str] = field(default_factory=list)
    augment: list[str] = field(default_factory=list)
    # Per-loss ranges [low, high], searched only in trials whose loss takes the key (loss.alpha: multi_similarity,
    # proxy_anchor; loss.gamma: circle; loss.temperature: ntxent); the other trials keep their loss's default.
    alpha: list[float] = field(default_factory=list)
    gamma: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    objective: str = choice("val_map_at_r", TUNING_OBJECTIVES)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
