"""``sensibert run``'s settings, validated when constructed, and the defaults each mode uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from toolchain.calibration import DEFAULT_SELECTION, SELECTIONS
from toolchain.errors import InputError
from toolchain.tasks import get_task
from toolchain.tasks.base import check_validation_fraction


TEACHER_FIRST = {"method": "fisher", "allocation": "proportional"}


PAPER = {"method": "density", "allocation": "proportional"}


RETRAIN_FREE = {"method": "fisher", "allocation": "global"}  # Kwon et al.'s search: Fisher per unit of cost


MODES = ("teacher-first", "no-teacher", "retrain-free")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``sensibert run`` needs; the saved form of a run's settings."""

    out: str
    model: str | None = None
    task: str = "sst2"
    data_dir: str | None = None
    profile: str = "rpi4-4gb"
    keep: float | None = None          # explicit budgets override the profile's (the profile still measures)
    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None    # override of the profile's latency target
    seq_len: int | None = None         # budget sequence length (default: the profile's; pairs and QA: max_length)
    precision: str | None = None       # deployed precision (default: the profile's)
    method: str | None = None         # default: TEACHER_FIRST / PAPER by mode
    sensitivity_steps: int = 100
    allocation: str | None = None     # default: TEACHER_FIRST / PAPER by mode
    cost_model: str = "flops"         # "latency": plans priced by the profile's measured latency table
    teacher: str = "dense"            # "dense" (the run's dense model), "none" (the paper's mode), or a directory
    distill_hidden: float = 1.0       # weight of the hidden-state distillation term
    finetune: bool = True             # False: the retraining-free mode (needs a fine-tuned --model)
    calibration_samples: int = 2048   # retraining-free: examples for Fisher and least squares
    min_keep: float = 0.0
    round_to: int = 1
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 1e-4
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train_from: str = "train"          # "dev": carve train and eval out of the dev file (needs holdout_by)
    holdout_by: str | None = None      # key column kept disjoint between carved splits
    eval_fraction: float = 0.2         # share of the key's values held out for eval when carving
    validation_fraction: float = 0.0   # > 0: carved from train, chooses the best epoch (0: the last is kept)
    doc_stride: int | None = None      # QA: tokens of overlap between windows (default: min(128, max_length // 2))
    vocab: str = "full"                # "task": keep only the word pieces the task's training texts use
    int8_variant: str | None = None    # deploy.int8 variant (default: the profile's runtime.int8_variant)
    qat: bool = False                  # a quantisation-aware phase before export (toolchain/qat.py)
    calibration_selection: str = DEFAULT_SELECTION  # which training inputs calibrate int8 (toolchain/calibration.py)
    seed: int = 0
    dense_baseline: bool = True
    max_attempts: int = 3
    bench_runs: int = 30
    force: bool = False

    def __post_init__(self) -> None:
        """Refuse every bad value here, before any work (the CLI's flags and a library call alike)."""
        get_task(self.task)  # an unknown task lists the registered ones
        SELECTIONS.lookup(self.calibration_selection)
        if sum(x is not None for x in (self.keep, self.params, self.flops)) > 1:
            raise InputError("give at most one of --keep, --params, --flops")
        if self.keep is not None and not (_number(self.keep) and 0 < self.keep <= 1):
            raise InputError(f"--keep {self.keep} is out of range; choose a fraction in (0, 1], e.g. 0.5")
        for flag, value in (("--params", self.params), ("--flops", self.flops), ("--seq-len", self.seq_len),
                            ("--max-train-samples", self.max_train_samples),
                            ("--max-eval-samples", self.max_eval_samples)):
            if value is not None and not _whole(value, 1):
                raise InputError(f"{flag} {value} is out of range; choose a whole number >= 1")
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--max-length", self.max_length, 8),
                                 ("--sensitivity-steps", self.sensitivity_steps, 1), ("--bench-runs", self.bench_runs, 1),
                                 ("--seed", self.seed, 0)):
            if not _whole(value, low):
                raise InputError(f"{flag} {value} is out of range; choose a whole number >= {low}")
        if self.latency_ms is not None and not (_number(self.latency_ms) and self.latency_ms > 0):
            raise InputError(f"--latency-ms {self.latency_ms} is out of range; choose a value > 0")
        if self.precision not in (None, "fp32", "int8"):
            raise InputError(f"--precision {self.precision!r} is unknown; choose fp32 or int8")
        check_validation_fraction(self.validation_fraction, get_task(self.task))
        if self.train_from not in ("train", "dev"):
            raise InputError(f"--train-from {self.train_from!r} is unknown; choose train or dev")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InputError(f"--max-attempts {self.max_attempts} is out of range; choose 1 or more")
        for flag, value in (("--epochs", self.epochs), ("--lr", self.lr)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise InputError(f"{flag} {value} is out of range; choose a value > 0")
        if not self.distill_hidden >= 0:
            raise InputError(f"--distill-hidden {self.distill_hidden} is out of range; choose a value >= 0")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise InputError(f"--calibration-samples {self.calibration_samples} is out of range; choose 1 or more")
        if not self.finetune and (self.cost_model == "latency" or self.allocation == "latency"):
            raise InputError("--no-finetune chooses its units by its own Fisher search, priced by FLOPs; drop "
                             "--cost-model latency / --allocation latency, or fine-tune")
        if not self.teacher:
            raise InputError("--teacher is empty; choose dense, none, or a fine-tuned classifier directory")
        if self.train_from != "train" and self.holdout_by is None:
            raise InputError(f"--train-from {self.train_from} carves splits out of one file and needs --holdout-by "
                             "KEY (e.g. question for qnli, premise for mnli, article for squad)")
        if self.int8_variant is not None:
            from deploy.int8 import get_variant

            get_variant(self.int8_variant)
            if self.qat:
                from toolchain.fake_quant import variant_for

                variant_for(self.int8_variant)
        if self.qat and self.precision == "fp32":
            raise InputError("--qat trains the model for its int8 file and --precision fp32 ships none; "
                             "drop --qat or ship int8")
        if self.qat and not self.finetune:
            raise InputError("--qat trains the trimmed model, and the retraining-free mode trains nothing; "
                             "drop --qat or --no-finetune")
        self.carve()  # its own checks
        if self.doc_stride is not None and not (isinstance(self.doc_stride, int)
                                                and 0 <= self.doc_stride < self.max_length):
            raise InputError(f"--doc-stride {self.doc_stride} is out of range; choose 0 <= stride < --max-length "
                             f"({self.max_length})")
        from toolchain.vocab import VOCAB_CHOICES

        if self.vocab not in VOCAB_CHOICES:
            raise InputError(f"--vocab {self.vocab!r} is unknown; choose one of: {', '.join(VOCAB_CHOICES)}")
        if self.holdout_by is not None:
            from toolchain.tasks import check_carve_key

            check_carve_key(get_task(self.task), self.holdout_by)
        from toolchain.sensitivity import get_scorer

        get_scorer(self.defaults()["method"])  # unknown names list the registered ones
        # the stages' own configs check their settings (allocation, --min-keep, --round-to, ...)
        self.plan_config()
        self.finetune_config()
        self.retrain_free_config()

    def plan_config(self) -> Any:
        """Return the allocator's settings of this run."""
        from toolchain.plan import PlanConfig

        return PlanConfig(allocation=self.defaults()["allocation"], min_keep=self.min_keep, round_to=self.round_to,
                          cost_model=self.cost_model)

    def finetune_config(self) -> Any:
        """Return the budgeted fine-tuning settings of this run."""
        from toolchain.finetune import FinetuneConfig

        return FinetuneConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                              distill_hidden=self.distill_hidden)

    def retrain_free_config(self) -> Any:
        """Return the retraining-free mode's settings of this run."""
        from toolchain.retrain_free import RetrainFreeConfig

        return RetrainFreeConfig(samples=self.calibration_samples, allocation=self.defaults()["allocation"],
                                 seed=self.seed)

    @property
    def stride(self) -> int:
        """Return the QA window overlap in effect: --doc-stride, else ``deploy.qa.default_doc_stride``."""
        from deploy.qa import default_doc_stride

        return self.doc_stride if self.doc_stride is not None else default_doc_stride(self.max_length)

    def carve(self) -> Any:
        """Return the CarveConfig when train and eval are carved out of one file, else None."""
        if self.holdout_by is None:
            return None
        from toolchain.tasks import CarveConfig

        return CarveConfig(by=self.holdout_by, eval_fraction=float(self.eval_fraction), source_split=self.train_from)

    def data_settings(self) -> dict[str, Any]:
        """Return the settings that decide which rows and tokens every stage sees."""
        return {"task": self.task, "data_dir": self.data_dir, "max_length": self.max_length,
                "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples,
                "train_from": self.train_from, "holdout_by": self.holdout_by,
                "eval_fraction": self.eval_fraction if self.holdout_by else None, "seed": self.seed,
                **({"doc_stride": self.stride} if self.task == "squad" else {}),
                **({"validation_fraction": self.validation_fraction} if self.validation_fraction else {})}

    @property
    def mode(self) -> str:
        """Return how the trimmed model is made: teacher-first (default), no-teacher, or retrain-free."""
        if not self.finetune:
            return "retrain-free"
        return "no-teacher" if self.teacher == "none" else "teacher-first"

    def defaults(self) -> dict[str, str]:
        """Return the sensitivity method and allocation in effect (flags, else the mode's defaults)."""
        base = {"no-teacher": PAPER, "retrain-free": RETRAIN_FREE}.get(self.mode, TEACHER_FIRST)
        return {"method": self.method or base["method"], "allocation": self.allocation or base["allocation"]}

    def settings(self) -> dict[str, Any]:
        """Return the settings that shape results (not where they go, not --force)."""
        body = asdict(self)
        body.pop("out")
        body.pop("force")
        return body


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
