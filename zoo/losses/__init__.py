"""Loss objects, one file per algorithm (see ``zoo.losses.base`` for the interface)."""

from zoo.losses.base import Loss, LossOutput, SequenceLogps, SequenceScores
from zoo.losses.cpo import CPOLoss
from zoo.losses.dpo import DPOLoss
from zoo.losses.grpo import GRPOLoss
from zoo.losses.ipo import IPOLoss
from zoo.losses.kto import KTOLoss
from zoo.losses.orpo import ORPOLoss
from zoo.losses.ppo import PPOLoss
from zoo.losses.reward import BradleyTerryLoss
from zoo.losses.rloo import RLOOLoss
from zoo.losses.sft import SFTLoss
from zoo.losses.simpo import SimPOLoss

__all__ = ["Loss", "LossOutput", "SequenceLogps", "SequenceScores", "BradleyTerryLoss", "CPOLoss", "DPOLoss",
           "GRPOLoss", "IPOLoss", "KTOLoss", "ORPOLoss", "PPOLoss", "RLOOLoss", "SFTLoss", "SimPOLoss"]
