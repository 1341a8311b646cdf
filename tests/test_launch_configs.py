"""The launch configs zoo ships (``conf/accelerate/``) pass accelerate's own parsing: the launcher's validation
of the file, the environment it would give the processes and the engine plugin built from that environment.
FSDP and DeepSpeed run on GPUs only (accelerate trains CPU processes data-parallel), so on these machines this
is what checks them; DDP also runs, in ``test_multiprocess.py``."""

import os
from types import SimpleNamespace
from unittest import mock

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from zoo.trainer import _check_engine
from zoo_cli import ACCELERATE_CONFIGS

ENGINES = {"ddp": DistributedType.MULTI_GPU, "fsdp_full": DistributedType.FSDP, "fsdp_lora": DistributedType.FSDP,
           "zero2": DistributedType.DEEPSPEED, "zero3": DistributedType.DEEPSPEED}


def launch_environment(name):
    """What ``accelerate launch --config_file conf/accelerate/NAME.yaml -m zoo.cli train`` would do: the config
    as the launcher reads it, and the environment of each process it starts."""
    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"),
                                               "-m", "zoo.cli", "train"])
    args, config, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)  # as launch_command sets it
        return config, prepare_deepspeed_cmd_env(args)[1]
    return config, prepare_multi_gpu_env(args)


def test_every_shipped_config_is_tested():
    assert sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(ENGINES)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_launch_config_parses_into_its_engine(name):
    config, env = launch_environment(name)
    assert config.distributed_type == ENGINES[name] and config.num_processes == 2
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # zoo's trainer.mixed_precision decides
    with mock.patch.dict(os.environ, env):
        if config.distributed_type == DistributedType.FSDP:
            plugin = FullyShardedDataParallelPlugin()
            assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
            # base weights loaded on rank 0 only would leave LoRA's adapters, created after loading, unsynchronised
            assert plugin.cpu_ram_efficient_loading == (name == "fsdp_full")
        elif config.distributed_type == DistributedType.DEEPSPEED:
            plugin = DeepSpeedPlugin()
            assert plugin.zero_stage == int(name[-1]) and plugin.gradient_clipping == 1.0
        else:
            assert env.get("ACCELERATE_USE_FSDP", "false") == "false" and "ACCELERATE_USE_DEEPSPEED" not in env


def fake_accelerator(engine, zero_stage=None):
    plugin = SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(distributed_type=engine, is_main_process=True, num_processes=2,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize(("engine", "stage"), [(DistributedType.FSDP, None), (DistributedType.DEEPSPEED, 3)])
def test_engines_that_shard_the_parameters_are_refused_with_what_to_use(engine, stage):
    with pytest.raises(ValueError, match="ddp.yaml or zero2.yaml"):
        _check_engine(fake_accelerator(engine, stage))


def test_data_parallel_engines_are_accepted(capsys, monkeypatch):
    _check_engine(fake_accelerator(DistributedType.DEEPSPEED, 2))
    _check_engine(fake_accelerator(DistributedType.MULTI_GPU))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    _check_engine(fake_accelerator(DistributedType.MULTI_CPU))  # DeepSpeed asked, CPU processes: DDP, and said so
    assert "asks for DeepSpeed, which accelerate runs on GPUs only" in capsys.readouterr().out
