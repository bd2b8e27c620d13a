"""The training config: every setting of a run, its default, its help and its valid range.

`TrainConfig` is the one home of the training settings. `define_flags` makes one absl flag
per field (name, default and help come from here) for `train` and `bench.run`; tests build
configs directly, and a run directory records one as JSON (runs.RunDir). It is frozen: a
run's settings do not change while it trains.

This module imports no TensorFlow and no model code (only the data package's names and
sizes): a command validates its flags and refuses a bad one before TensorFlow is imported.
The registries (synthesis.METHODS, models.build_classifier, distribute.make_strategy) are
keyed by the names below; tests/test_config.py checks that they match. What a setting
means for a synthesis method (e.g. --train_on=synthetic needs an untargeted one) is checked
by synthesis.check_config, which train and experiment call before any work.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from absl import flags

from tsynd_tf.data.core import FOLDER, KERMANY_GROUP_PATTERN
from tsynd_tf.data.medmnist_data import MEDMNIST_SIZES, available_datasets
from tsynd_tf.errors import ConfigError

# The names each registry is keyed by (their one home).
METHODS = ("baseline", "latent_noise", "tsynd_mi", "tsynd_entropy", "augment", "diffusion",
           "gan", "tsynd_diffusion", "tsynd_diffusion_entropy", "external")
CLASSIFIERS = ("small_cnn", "resnet18")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
RENDERINGS = ("decode", "residual")  # how a moved latent becomes an image (--rendering)
TRAIN_ON = ("real+synthetic", "synthetic")
PROPORTIONAL = "proportional"  # --synthetic_ratio: the share follows the amount
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Training flags a sweep sets per cell (tsynd_tf.experiment, tsynd_tf.compare): extra
# training flags may not set them, or a cell would train another run than it names.
SET_PER_CELL = ("method", "seed", "output_dir", "export_dir", "cache_dir")
GENERATOR_SIZES = ("auto", "small", "large")  # "auto": large when a GPU is visible

# Settings that may differ between a run and its resumption: they do not change the result
# (`strategy` says how to train, not what: a checkpoint restores under any strategy).
# --external_pool is known by its content (config.json's inputs), not by its path.
RESUMABLE = frozenset({"output_dir", "data_dir", "export_dir", "verbose", "strategy",
                       "cache_dir", "external_pool"})


def _upgrade(recorded: dict) -> dict:
    """Settings a run recorded under an older name, in today's terms (same behaviour):
    --pool_fraction p per round was --synthetic_multiple p * rounds in total,
    --synthesis (decode/residual) is --rendering, and --synthetic_ratio (a number then) is
    a string that may also say 'proportional'."""
    recorded = dict(recorded)
    if "pool_fraction" in recorded:
        rounds = recorded.get("rounds", TrainConfig.rounds)
        recorded.setdefault("synthetic_multiple", recorded.pop("pool_fraction") * rounds)
    if "synthesis" in recorded:
        recorded.setdefault("rendering", recorded.pop("synthesis"))
    if isinstance(recorded.get("synthetic_ratio"), (int, float)):  # a number before
        recorded["synthetic_ratio"] = str(recorded["synthetic_ratio"])
    return recorded


def _field(default, help: str, choices: str | None = None):
    """A setting; `choices` names the module's tuple of its valid values (looked up when
    used, so that a test can register a name, as a new method's module would)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def choices(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The valid values of a setting that has a fixed set of them."""
    return globals()[field.metadata["choices"]] if field.metadata["choices"] else None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Data.
    dataset: str = _field("pneumoniamnist", "MedMNIST 2D dataset name, or 'folder' for an "
                          "image folder at --data_dir.")
    size: int = _field(28, f"Image size in pixels: {MEDMNIST_SIZES} for MedMNIST, any even "
                       "size >= 14 for an image folder.")
    data_dir: str | None = _field(None, "MedMNIST root (default $TSYND_DATA_DIR, else "
                                  "~/.medmnist), or the image folder for --dataset=folder.")
    channels: int = _field(1, "Channels (1 or 3) of --dataset=folder images; MedMNIST "
                           "datasets keep their own.")
    val_fraction: float = _field(0.1, "Validation share carved from train for an image "
                                 "folder without a val/ folder.")
    group_pattern: str = _field(KERMANY_GROUP_PATTERN, "Regex whose first capture group in an "
                                "image folder's file name names its patient: the validation "
                                "split carved from train keeps patients whole. The default "
                                "matches the Kermany chest X-ray names (personNNN_, IM-NNNN-, "
                                "NORMAL2-IM-NNNN-); a name it does not match is its own group; "
                                "'' makes every image its own group.")
    train_fraction: float = _field(0.1, "Labelled share of the training split (0, 1].")
    train_count: int = _field(0, "Labelled training images; overrides --train_fraction when "
                              "> 0.")
    augment: bool = _field(False, "Light random translation of training images.")
    # Method.
    method: str = _field("tsynd_mi", "What synthetic data to add.", "METHODS")
    rounds: int = _field(5, "Generation rounds after the initial training.")
    synthetic_multiple: float = _field(5.0, "Synthetic images in all, as a multiple of the "
                                       "labelled images (1 = 100% supplementation); each of "
                                       "the --rounds makes an equal share.")
    pool_quality: bool = _field(True, "Measure every pool (FID, KID, precision/recall, label "
                                "fidelity, diversity) against the training split, in the "
                                "features of a reference classifier cached in --cache_dir.")
    train_on: str = _field("real+synthetic", "'synthetic': train on the synthetic images only "
                           "(all made before the classifier trains; untargeted methods) and "
                           "test on real ones, the Classification Accuracy Score.", "TRAIN_ON")
    synthetic_ratio: str = _field("0.5", "Share of each training batch that is synthetic: a "
                                  "number in (0, 1) (the same share whatever the amount), or "
                                  "'proportional': the synthetic images' share of all "
                                  "training images so far, as adding them to the dataset "
                                  "would give (m / (1 + m) after the last round).")
    epsilon: float = _field(0.3, "Latent ball radius, relative to ||z0||_2.")
    step_size: float = _field(0.25, "Ascent step length, relative to the ball radius.")
    ascent_steps: int = _field(10, "Gradient ascent steps per synthetic image.")
    generator_steps: int = _field(1500, "Training batches of a generating method's generator "
                                  "(diffusion, gan), trained once per labelled subset and "
                                  "cached in --cache_dir.")
    generator_learning_rate: float = _field(2e-4, "Adam learning rate of the GAN's generator "
                                            "(its discriminator's is a fixed multiple). The "
                                            "diffusion model's is its recipe's "
                                            "(--generator_size).")
    ddim_steps: int = _field(25, "DDIM sampling steps of --method=diffusion.")
    guidance_scale: float = _field(2.0, "Classifier-free guidance w of --method=diffusion: "
                                   "eps = (1 + w) eps(x, y) - w eps(x); 0 = no guidance.")
    generator_size: str = _field("auto", "Size of the diffusion generator: 'small' (chosen "
                                 "for 2 CPU cores, docs/PERFORMANCE.md), 'large' (near a "
                                 "GPU-trained 11M-parameter DDPM: for a GPU), 'auto' = large "
                                 "when a GPU is visible, else small.", "GENERATOR_SIZES")
    uncertainty_guidance: float = _field(0.1, "Uncertainty guidance of the tsynd_diffusion "
                                         "methods: per guided DDIM step the predicted clean "
                                         "image moves this far (RMS in [0, 1] pixels, times "
                                         "the step's noise share sqrt(1 - alpha_bar)) up the "
                                         "classifier's MI/entropy gradient; 0 = the "
                                         "diffusion samples.")
    guidance_every: int = _field(1, "Uncertainty guidance at every k-th DDIM step (1 = every "
                                 "step; larger is cheaper).")
    external_pool: str = _field("", "--method=external: the user's own synthetic images, an "
                                ".npz (images uint8 NxHxW[xC], labels N) or a folder of "
                                "<class>/*.png, '{seed}' replaced by --seed (e.g. "
                                "pools/ddpm_s{seed}.npz). Other methods ignore it, so a "
                                "sweep can pass it to all.")
    rendering: str = _field("decode", "Synthetic image from the moved latent z*: 'decode' = "
                            "dec(z*) (the paper); 'residual' = x + dec(z*) - dec(z0), the real "
                            "image plus the change the latent move makes.", "RENDERINGS")
    # Models.
    classifier: str = _field("small_cnn", "Classifier architecture.", "CLASSIFIERS")
    dropout_rate: float = _field(0.3, "MC dropout rate (head; half of it after each stage).")
    num_samples: int = _field(10, "MC dropout samples T per image.")
    latent_channels: int = _field(8, "Channels of the autoencoder's latent maps.")
    ae_width: int = _field(16, "Filters of the autoencoder's first layer (doubling per level "
                           "up to 8x).")
    # Optimisation.
    batch_size: int = _field(64, "Training batch size.")
    eval_batch_size: int = _field(256, "Batch size of evaluation and generation.")
    steps_per_epoch: int = _field(0, "Classifier and autoencoder steps per epoch; 0 = one "
                                  "pass over their training images.")
    learning_rate: float = _field(1e-3, "Classifier Adam learning rate.")
    initial_epochs: int = _field(20, "Classifier epochs on real data before round 1.")
    epochs_per_round: int = _field(10, "Classifier epochs after each round.")
    ae_learning_rate: float = _field(1e-3, "Autoencoder Adam learning rate.")
    ae_epochs: int = _field(30, "Autoencoder epochs.")
    ae_use_unlabelled: bool = _field(False, "Train the autoencoder on the whole training "
                                     "split's images (no labels used); default: the labelled "
                                     "subset only.")
    # Run.
    seed: int = _field(0, "Seed of the subset, initialisation, shuffling and dropout.")
    output_dir: str | None = _field(None, "Run directory (default runs/<dataset>_<size>_"
                                    "<fraction>_<method>_s<seed>). An existing run there is "
                                    "resumed.")
    cache_dir: str = _field("", "Model cache shared by runs (trained generators, the quality "
                            "metrics' reference classifier); '' = $TSYND_CACHE_DIR, else "
                            "~/.cache/tsynd_tf.")
    export_dir: str = _field("saved_models", "Where the SavedModel goes; '' to skip.")
    mixed_precision: str = _field("auto", "'auto': mixed_float16 on a GPU, float32 on a CPU.",
                                  "PRECISIONS")
    strategy: str = _field("default", "tf.distribute strategy: 'mirrored' = this machine's "
                           "GPUs, 'multi_worker' = several machines configured by TF_CONFIG "
                           "(BUILD.md), 'tpu'.", "STRATEGIES")
    jit_compile: bool = _field(False, "XLA-compile train and ascent steps (GPU; on CPU it is "
                               "10-30x slower).")
    verbose: int = _field(-1, "Keras verbosity; -1: progress bars on a terminal, one line per "
                          "epoch otherwise.")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Impossible values fail here, before any data is read: the message names the flag,
        what it may be and the value given."""
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            allowed = choices(field)
            if allowed and value not in allowed:
                raise ConfigError(f"--{name} must be one of {list(allowed)}; got {value!r}.")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{name} must be a finite number; got {value!r}.")
        for name, valid, what in _RULES:
            if not valid(getattr(self, name)):
                raise ConfigError(f"--{name} must be {what}; got {getattr(self, name)!r}.")
        self._validate_data()
        if self.method == "external" and not self.external_pool:
            raise ConfigError("--method=external needs --external_pool=<.npz or folder of "
                              "<class>/*.png with your synthetic images>.")

    def _validate_data(self) -> None:
        if self.dataset != FOLDER and self.dataset not in available_datasets():
            raise ConfigError(f"--dataset must be a MedMNIST 2D dataset "
                              f"({', '.join(available_datasets())}) or '{FOLDER}'; got "
                              f"{self.dataset!r}.")
        if self.dataset == FOLDER and not self.data_dir:
            raise ConfigError(f"--dataset={FOLDER} needs --data_dir=<folder with train/ and "
                              "test/ class subfolders>.")
        if self.dataset != FOLDER and self.size not in MEDMNIST_SIZES:
            raise ConfigError(f"--size must be one of {MEDMNIST_SIZES} for MedMNIST; got "
                              f"{self.size}.")
        if self.dataset == FOLDER and not (self.size >= 14 and self.size % 2 == 0):
            raise ConfigError(f"--size must be an even number >= 14 for --dataset={FOLDER}; "
                              f"got {self.size}.")
        try:
            re.compile(self.group_pattern)
        except re.error as e:
            raise ConfigError(f"--group_pattern {self.group_pattern!r} is not a regular "
                              f"expression ({e}).") from None

    # ------------------------------------------------------------------ derived values
    def run_name(self) -> str:
        amount = f"n{self.train_count}" if self.train_count else f"f{self.train_fraction:g}"
        dataset = Path(self.data_dir).name if self.dataset == FOLDER else self.dataset
        return f"{dataset}_{self.size}_{amount}_{self.method}_s{self.seed}"

    def stream_seed(self, index: int) -> int:
        """The seed of the run's index-th random stream: a round's pool (index = round),
        a classifier stage's batches (index = its first epoch). Seeds of different runs'
        streams do not collide below 1000 rounds or epochs."""
        return self.seed * 1000 + index

    # ------------------------------------------------------------------ JSON round-trip
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From recorded settings; a field a run recorded before it existed takes its
        default (new fields' defaults keep the old behaviour)."""
        values = _upgrade(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}")
        return cls(**values)

    def check_resumable(self, recorded: dict, where: Path) -> None:
        """Resuming a run with other settings than it was started with is an error."""
        recorded = {**{f.name: f.default for f in dataclasses.fields(self)},
                    **_upgrade(recorded)}
        changed = {k: (recorded[k], v) for k, v in self.to_dict().items()
                   if k not in RESUMABLE and recorded[k] != v}
        if changed:
            raise ConfigError(f"{where} holds a run with other settings {changed} (old, new): "
                              "pass a new --output_dir, or the same flags to resume.")


def _at_least(low):
    return lambda value: value >= low


def _number(text: str) -> float:
    """A string setting's number; NaN (outside every range) when it is not one."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _positive(value) -> bool:
    return value > 0


def _between(low, high):  # the open interval (low, high)
    return lambda value: low < value < high


# The range of every numeric setting, one rule per flag: (field, valid(value), what a valid
# value is). TrainConfig.validate checks them in this order.
_RULES = (
    ("train_fraction", lambda value: 0.0 < value <= 1.0, "in (0, 1]"),
    ("train_count", _at_least(0), ">= 0 (0: use --train_fraction)"),
    ("channels", lambda value: value in (1, 3), "1 or 3"),
    ("val_fraction", _between(0.0, 1.0), "in (0, 1)"),
    ("rounds", _at_least(0), ">= 0"),
    ("synthetic_multiple", _positive, "> 0"),
    ("synthetic_ratio", lambda value: value == PROPORTIONAL or _between(0.0, 1.0)(
        _number(value)), f"a number in (0, 1) or '{PROPORTIONAL}'"),
    ("epsilon", _positive, "> 0"),
    ("step_size", _positive, "> 0"),
    ("ascent_steps", _at_least(1), ">= 1"),
    ("generator_steps", _at_least(1), ">= 1"),
    ("generator_learning_rate", _positive, "> 0"),
    ("ddim_steps", _at_least(1), ">= 1"),
    ("guidance_scale", _at_least(0.0), ">= 0 (0: no guidance)"),
    ("uncertainty_guidance", _at_least(0.0), ">= 0 (0: unguided diffusion samples)"),
    ("guidance_every", _at_least(1), ">= 1"),
    ("dropout_rate", _between(0.0, 1.0), "in (0, 1)"),
    ("num_samples", _at_least(2), ">= 2 (MI needs several MC samples)"),
    ("latent_channels", _at_least(1), ">= 1"),
    ("ae_width", _at_least(1), ">= 1"),
    ("batch_size", _at_least(2), ">= 2"),
    ("eval_batch_size", _at_least(1), ">= 1"),
    ("steps_per_epoch", _at_least(0), ">= 0 (0: one pass)"),
    ("learning_rate", _positive, "> 0"),
    ("ae_learning_rate", _positive, "> 0"),
    ("initial_epochs", _at_least(1), ">= 1"),
    ("epochs_per_round", _at_least(0), ">= 0"),
    ("ae_epochs", _at_least(1), ">= 1"),
    ("seed", lambda value: 0 <= value < 2**32, "in [0, 2**32)"),
    ("verbose", lambda value: value in (-1, 0, 1, 2), "-1, 0, 1 or 2"),
)


_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string, type(None): flags.DEFINE_string}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One absl flag per TrainConfig field, with its default and help."""
    for field in dataclasses.fields(TrainConfig):
        name, default, help_text = field.name, field.default, field.metadata["help"]
        if choices(field):
            flags.DEFINE_enum(name, default, list(choices(field)), help_text,
                              flag_values=flag_values)
        else:
            _DEFINE[type(default)](name, default, help_text, flag_values=flag_values)


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    """The parsed flags as a TrainConfig (ConfigError names an impossible one)."""
    return TrainConfig(**{f.name: flag_values[f.name].value
                          for f in dataclasses.fields(TrainConfig)})
