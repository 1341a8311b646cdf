"""``zoo compare compare=smollm2`` and ``compare=smollm2_gpu``: the comparison on SmolLM2-135M-Instruct.

The CPU preset runs end to end here, shrunken, on a SmolLM2-shaped model (tests/gguf_model.py) put in the
stage cache where ``zoo model fetch`` puts the real one; the GPU preset cannot run on these machines, so
every run it would launch is composed and checked against the single-run budgets it promises."""

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import gguf_model
from zoo import packaged
from zoo.compare import split_top_level
from zoo.config import compose_compare_config, compose_train_config
from zoo_cli import zoo

ARMS = Path(packaged.__file__).parent / "conf" / "compare"
ALGOS = {"ppo", "rlaif", "dpo", "ipo", "kto", "orpo"}


def planned_runs(plan_name: str, cache: Path) -> list:
    """The train config of every run the plan launches, composed as its sweeps launch them."""
    plan = compose_compare_config([f"compare={plan_name}"])
    runs = []
    for sweep in OmegaConf.to_container(plan.sweeps, resolve=False):
        choices = [[f"{o.split('=', 1)[0]}={v}" for v in split_top_level(o.split("=", 1)[1])] for o in sweep]
        combos = [[]]
        for options in choices:
            combos = [[*combo, option] for combo in combos for option in options]
        for combo in combos:
            for seed in plan.seeds:
                combo = [("+" + o) if o.startswith("arm=") else o for o in combo]
                runs.append(compose_train_config([*plan.overrides, *combo, f"seed={seed}",
                                                  f"stages.cache_dir={cache}",
                                                  f"hydra.searchpath=[file://{ARMS}]"]))
    return plan, runs


@pytest.fixture
def no_fetch(monkeypatch, tmp_path):
    monkeypatch.setattr(packaged, "fetch", lambda name, cache: Path(cache) / f"fetched-{name}")
    return tmp_path


def shared(run) -> str:
    """What every run of a comparison must share: the starting policy, the task, the pairs and the eval."""
    return json.dumps([run.model.name_or_path, run.data.name, run.data.prompts_path, run.data.eval_path,
                       *(OmegaConf.to_container(node) for node in (run.stages.preferences, run.stages.reward,
                                                                   run.eval, run.peft))])


@pytest.mark.parametrize("plan_name", ["smollm2", "smollm2_gpu"])
def test_every_method_starts_from_the_same_model_pairs_and_eval(plan_name, no_fetch):
    plan, runs = planned_runs(plan_name, no_fetch)
    assert {run.algo.name for run in runs} == ALGOS and len({shared(run) for run in runs}) == 1
    run = runs[0]
    assert run.model.name == "smollm2-135m" and run.data.name == "reviews" and run.peft.enabled
    assert run.model.name_or_path == str(no_fetch / "fetched-smollm2-135m-instruct")
    # RLAIF's pairs are labelled by the SmolLM2 judge, every other method's by the simulated raters
    assert {(r.algo.name, r.feedback.name) for r in runs if r.algo.name in ("rlaif", "ppo")} == {
        ("rlaif", "smollm2-judge"), ("ppo", "gold")}
    assert {r.feedback.name for r in runs if r.algo.name not in ("rlaif",)} == {"gold"}
    assert list(plan.feedback) == ["gold", "smollm2_judge"]  # both reward models built before the runs
    # best-of-N reads (the first of) the runs' eval prompts and never asks for more samples than its pool has
    assert plan.best_of_n_prompts <= run.eval.num_prompts and max(plan.best_of_n) <= plan.best_of_n_pool


@pytest.mark.parametrize("plan_name", ["recent", "smollm2_recent"])
def test_the_recent_methods_run_beside_their_anchors_on_the_anchors_budgets(plan_name, no_fetch):
    """compare=recent (the world, 3 seeds) and smollm2_recent: RLOO, GRPO, SimPO and CPO with PPO and DPO from
    the same reference, pairs and eval; RLOO and GRPO on PPO's budget (steps, rate, batch, rollouts), SimPO and
    CPO on DPO's, each with its own loss."""
    plan, runs = planned_runs(plan_name, no_fetch)
    assert {run.algo.name for run in runs} == {"rloo", "grpo", "ppo", "simpo", "cpo", "dpo"}
    assert len(runs) == 6 * len(plan.seeds) and len(plan.seeds) == (3 if plan_name == "recent" else 1)
    assert len({shared(run) for run in runs}) == 1 and {run.feedback.name for run in runs} == {"gold"}
    first = {run.algo.name: run for run in runs if run.seed == plan.seeds[0]}
    for new, anchor in (("rloo", "ppo"), ("grpo", "ppo"), ("simpo", "dpo"), ("cpo", "dpo")):
        budget = ("max_steps", "learning_rate", "batch_size", "grad_accum_steps", "warmup_steps")
        assert [first[new].trainer[k] for k in budget] == [first[anchor].trainer[k] for k in budget], new
        assert first[new].algo.loss._target_ != first[anchor].algo.loss._target_
    for new in ("rloo", "grpo"):
        assert OmegaConf.to_container(first[new].rollout) == OmegaConf.to_container(first["ppo"].rollout)
        # k = 4 samples of a quarter as many prompts: the same sequences per rollout as PPO's
        assert first[new].algo.loss.samples_per_prompt == 4


def test_the_cpu_preset_is_one_seed_on_shortened_budgets(no_fetch):
    plan, runs = planned_runs("smollm2", no_fetch)
    assert list(plan.seeds) == [0] and plan.n_jobs == 1 and len(runs) == 6
    for run in runs:
        single = compose_train_config(["model=smollm2_135m", "peft=lora", f"algo={run.algo.name}",
                                       f"stages.cache_dir={no_fetch}"])
        assert run.trainer.max_steps < single.trainer.max_steps
    assert runs[0].stages.preferences.num_prompts == 384 and runs[0].eval.num_prompts == 128


def test_the_gpu_preset_is_three_seeds_at_the_single_run_budgets(no_fetch):
    plan, runs = planned_runs("smollm2_gpu", no_fetch)
    assert list(plan.seeds) == [0, 1, 2] and len(runs) == 18 and max(plan.best_of_n) == 64
    for run in runs:
        extra = ["feedback=smollm2_judge"] if run.algo.name == "rlaif" else []
        single = compose_train_config(["model=smollm2_135m", "peft=lora", f"algo={run.algo.name}", *extra,
                                       f"stages.cache_dir={no_fetch}"])
        assert OmegaConf.to_container(run.trainer) == OmegaConf.to_container(single.trainer)
        assert OmegaConf.to_container(run.algo) == OmegaConf.to_container(single.algo)
        assert OmegaConf.to_container(run.rollout) == OmegaConf.to_container(single.rollout)
    assert runs[0].stages.preferences.num_prompts == 968 and runs[0].eval.num_prompts == 256


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A SmolLM2-shaped model converted from GGUF as `zoo model fetch` converts the real one."""
    tmp = tmp_path_factory.mktemp("smollm2_shape")
    model = gguf_model.tiny_smollm2(len(gguf_model._tokenizer_parts()[0]))
    packaged.convert_gguf(gguf_model.write_gguf(model, tmp / "tiny.gguf"), tmp / "model")
    return tmp / "model"


def test_a_lora_reward_model_scores_alike_on_a_shared_base_and_on_its_own(converted, tmp_path):
    """PPO holds a LoRA RM as one more adapter on the policy's base; best-of-N, whose reference is a plain
    model, loads it on a base of its own. Both must give the scores the RM was trained to give."""
    import torch
    from omegaconf import OmegaConf

    from zoo.builders import reward_model_scorer
    from zoo.models import apply_lora, load_causal_lm, load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(str(converted))
    torch.manual_seed(0)
    rm = apply_lora(load_reward_model(str(converted), tokenizer.pad_token_id), 4, 8, 0.0, "all-linear",
                    task_type="SEQ_CLS")
    with torch.no_grad():  # a trained-looking RM: nonzero LoRA B and a head unlike its initialisation
        for name, param in rm.named_parameters():
            if "lora_B" in name or "score" in name:
                param.normal_(0, 0.5)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    cfg = OmegaConf.create({"model": {"dtype": "float32", "trust_remote_code": False},
                            "data": {"max_length": 64}, "rollout": {"forward_batch_size": 8}})
    prompts, replies = ["Write a review."] * 3, ["Great film.", "Dull and long.", "It was fine, I suppose."]
    plain = load_causal_lm(str(converted))
    shared = apply_lora(load_causal_lm(str(converted)), 4, 8, 0.0, "all-linear")
    on_own_base = reward_model_scorer(cfg, plain, str(tmp_path / "rm"), tokenizer)(prompts, replies, "cpu")
    on_shared = reward_model_scorer(cfg, shared, str(tmp_path / "rm"), tokenizer)(prompts, replies, "cpu")
    assert torch.allclose(on_own_base, on_shared, atol=1e-4) and on_own_base.std() > 1e-3


@pytest.fixture(scope="module")
def smollm2_compared(cache, converted, tmp_path_factory):
    """The CPU preset, shrunken, on the SmolLM2-shaped model placed in the cache as the fetched model."""
    tmp = tmp_path_factory.mktemp("smollm2_compare")
    spec = packaged.PACKAGED_MODELS["smollm2-135m-instruct"]
    stage = Path(cache) / f"model-smollm2-135m-instruct-{spec.wheel_sha256[:16]}"
    shutil.copytree(converted, stage / "model")
    (stage / "stage.json").write_text(json.dumps({"stage": "model-smollm2-135m-instruct", "test": "tiny shape"}))
    out = tmp / "out"
    proc = zoo("compare", "compare=smollm2", "experiment=smoke", "eval.num_prompts=4", "eval.max_new_tokens=8",
               "stages.preferences.num_prompts=16", "stages.preferences.max_new_tokens=8",
               "rollout.max_new_tokens=8", "trainer.max_steps=2", "trainer.batch_size=2",
               "compare.best_of_n=[1,2,4]", "compare.best_of_n_prompts=4", "compare.best_of_n_pool=4",
               f"compare.out={out}", cache=cache, check=False)
    return out, proc


def test_the_cpu_preset_runs_every_method_and_best_of_n_end_to_end(smollm2_compared):
    out, proc = smollm2_compared
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in (out / "runs").rglob("metrics.json")]
    assert {r["algo"] for r in runs} == ALGOS and all(r["status"] == "finished" for r in runs)
    for r in runs:
        assert r["model"] == "smollm2-135m" and r["data"] == "reviews" and r["steps"] == 2
        assert "textblob" in r["other_rewards"] and r["fluency"] == -r["nll_under_ref"]
    assert {r["feedback"] for r in runs if r["algo"] == "rlaif"} == {"smollm2-judge"}
    record = json.loads((out / "compare.json").read_text())
    assert record["overrides"][:2] == ["model=smollm2_135m", "peft=lora"] and not record["failed_runs"]


def test_best_of_n_reports_what_every_run_reports_on_a_task_without_a_grammar(smollm2_compared):
    """The held-out scorer, NLL under the reference and repetition, under the same weights as gold; N = 1 is
    the reference's own pool, so each equals its reference value exactly."""
    out, proc = smollm2_compared
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {p.parent.name: json.loads(p.read_text()) for p in (out / "best_of_n").rglob("metrics.json")}
    assert set(rows) == {"reference", "best_of_2", "best_of_4"}  # no SFT stage: N = 1 is the model as given
    for row in rows.values():
        assert row["fluency"] == -row["nll_under_ref"] and row["nll_under_ref"] > 0
        assert set(row["other_rewards"]) == {"textblob"}
    ref = rows["reference"]
    assert ref["nll_under_ref"] == pytest.approx(ref["ref_nll_under_ref"])
    assert ref["repeated_3grams"] == pytest.approx(ref["ref_repeated_3grams"])
    assert ref["other_rewards"]["textblob"]["mean"] == pytest.approx(ref["other_rewards"]["textblob"]["ref_mean"])
    assert ref["other_rewards"]["textblob"]["win_rate_vs_ref"] == pytest.approx(0.5)


def test_the_notebook_executes_against_the_smollm2_comparison(smollm2_compared, cache, tmp_path, monkeypatch):
    """notebooks/explore.ipynb reads a SmolLM2 comparison as it reads the world's: the reference's row is
    `reference` there, and there is no grammar."""
    nbformat = pytest.importorskip("nbformat")  # in the test extra: CI always runs this
    from nbclient import NotebookClient

    out, proc = smollm2_compared
    assert proc.returncode == 0, proc.stderr[-3000:]
    notebook_path = Path(__file__).parent.parent / "notebooks" / "explore.ipynb"
    notebook = nbformat.read(notebook_path, as_version=4)
    for key, value in (("ZOO_RUNS", out), ("ZOO_CACHE", cache), ("ZOO_NOTEBOOK_RUN_DIR", tmp_path / "dpo")):
        monkeypatch.setenv(key, str(value))  # the kernel inherits them
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook_path.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| reference/none |" in shown and "| dpo/gold |" in shown and "| rlaif/smollm2-judge |" in shown
