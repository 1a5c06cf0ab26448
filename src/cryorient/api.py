"""The names a Python user imports, in one place (``from cryorient.api import ...``).

Configurations (validated on construction) and the function each stage is called by::

    import torch
    from cryorient.api import (DensityConfig, RefineConfig, SimulationConfig, evaluate_poses, load_volume,
                               refine, simulate_stack, truth_of)

    g = torch.Generator().manual_seed(0)
    volume = load_volume("3kpr_single", DensityConfig(box=64, pixel_size=2.5))
    stack, _ = simulate_stack(volume, 2.5, SimulationConfig(n_particles=2000, ctf=True), g)
    truth, blind = truth_of(stack), stack.blind().with_half_sets(g)
    result = refine(blind, volume, RefineConfig(poses="search"))
    print(result.resolution.angstrom, evaluate_poses(result.rotations, None, truth, 2.5).median_deg)

Importing this module imports torch (a second or so); the command line does not.
"""

from __future__ import annotations

from .config import (
    AmbiguityConfig,
    AugmentationConfig,
    CTFSampling,
    DensityConfig,
    LocalRefineConfig,
    ModelConfig,
    PipelineConfig,
    ReconstructConfig,
    RecoverConfig,
    RecoveryConfig,
    RefineConfig,
    SimulationConfig,
    TrainConfig,
)
from .density import load_reference, load_volume
from .distance.data import imaging_from_stack
from .distance.predict import model_source
from .distance.proposer import NetworkProposer
from .distance.train import TrainResult, load_model, train_on_reference
from .errors import CryorientError
from .evaluation import Truth, evaluate_poses, truth_of
from .orientation.run import RecoverOutcome, run_recovery
from .orientation.sources import make_source
from .particles import ParticleStack, read_particles, write_particles
from .pipeline import RunSummary, run_pipeline
from .reconstruct.run import ReconstructionResult, reconstruct
from .refine.loop import RefineResult, refine
from .simulate.simulator import simulate_stack
from .volumes import align_maps, fsc, resolution_at

__all__ = [
    "AmbiguityConfig", "AugmentationConfig", "CTFSampling", "CryorientError", "DensityConfig",
    "LocalRefineConfig", "ModelConfig", "NetworkProposer", "ParticleStack", "PipelineConfig",
    "ReconstructConfig", "ReconstructionResult", "RecoverConfig", "RecoverOutcome", "RecoveryConfig",
    "RefineConfig", "RefineResult", "RunSummary", "SimulationConfig", "TrainConfig", "TrainResult", "Truth",
    "align_maps", "evaluate_poses", "fsc", "imaging_from_stack", "load_model", "load_reference", "load_volume",
    "make_source", "model_source", "read_particles", "reconstruct", "refine", "resolution_at", "run_pipeline",
    "run_recovery", "simulate_stack", "train_on_reference", "truth_of", "write_particles",
]
