import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest
import torch

from cryorient import so3
from cryorient.config import (
    ENCODER_STAGES,
    AugmentationConfig,
    DensityConfig,
    ModelConfig,
    SimulationConfig,
    TrainConfig,
)
from cryorient.density import load_volume
from cryorient.distance.data import ImagingModel, ReferenceSampler, augment_volume
from cryorient.distance.model import SiameseDistance
from cryorient.distance.preprocess import check_compatible, prepare_inputs
from cryorient.distance.train import batch_loss, load_model, train
from cryorient.errors import CryorientError
from cryorient.imaging.noise import estimate_snr
from cryorient.io import save_checkpoint
from cryorient.simulate.simulator import simulate_stack
from cryorient.so3 import rotmat_distance

TINY = ModelConfig(width=8, input_size=16, input_pixel_size=8.0)


@pytest.fixture(scope="module")
def volume():
    return load_volume("1ake_adk_closed", DensityConfig(box=32, pixel_size=4.0))


def sampler(volume, seed=0, snr=math.inf, aug=False):
    imaging = ImagingModel(32, 4.0, snr, 1.0, None)
    return ReferenceSampler(volume, imaging, TINY, AugmentationConfig(enabled=aug),
                            torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head", ["rotation", "cosine"])
def test_output_shape_range_and_symmetry(volume, head):
    torch.manual_seed(0)
    model = SiameseDistance(ModelConfig(width=8, input_size=16, head=head)).eval()
    x, _, _ = sampler(volume).batch(12)
    emb = model.embed(x)
    assert emb.shape == (12, 9 if head == "rotation" else 512)
    d = model.distance(emb[:6], emb[6:])
    assert d.shape == (6,) and (d >= 0).all() and (d <= math.pi + 1e-6).all()
    assert torch.allclose(d, model.distance(emb[6:], emb[:6]), atol=1e-6)
    assert torch.allclose(model(x[:6], x[6:]), model(x[6:], x[:6]), atol=1e-6)
    # the dense form that validation uses is the same distance for every pair (in float64: an
    # untrained cosine head's embeddings are nearly parallel, ~0.003 rad apart, where float32's
    # arccos leaves both forms ~2e-4 from the exact value)
    e64 = emb.detach().double()
    dense = model.distance_matrix(e64[:6], e64[6:])
    assert dense.shape == (6, 6)
    assert torch.allclose(dense, model.distance(e64[:6, None], e64[None, 6:]), atol=1e-9)
    if head == "rotation":
        r = emb.view(-1, 3, 3)
        assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(12, 3, 3), atol=1e-5)


def test_tiny_model_overfits_16_pairs(volume):
    torch.manual_seed(0)
    x, rot, _ = sampler(volume, seed=3).batch(32)
    model = SiameseDistance(ModelConfig(width=8, input_size=16, head="cosine", embedding=64))
    cfg = TrainConfig(objective="pairs", model=model.config)
    i = torch.arange(16)
    pairs_x = torch.cat([x[i], x[i + 16]])
    pairs_rot = torch.cat([rot[i], rot[i + 16]])
    target = rotmat_distance(pairs_rot[:16], pairs_rot[16:])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = batch_loss(model, pairs_x, pairs_rot, target, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(pairs_x[:16], pairs_x[16:])
    assert float((pred - target).abs().mean()) < 0.1


@pytest.mark.parametrize("hypotheses", [1, 2])
def test_pose_hypotheses_keep_both_modes_of_an_ambiguous_image(volume, hypotheses):
    """Each image's true pose is one of two, 120 deg apart, at random (as for a view and its
    pseudo-symmetric mate): one hypothesis regresses to a compromise far from both; two
    hypotheses find both (the nearest is close), and the best-scored one is the embedding."""
    torch.manual_seed(0)
    x, _, _ = sampler(volume, seed=3).batch(8)
    modes = so3.sample_rotations(8, torch.Generator().manual_seed(1))
    other = modes @ so3.euler_to_rotmat(0.0, 120.0, 0.0)
    model = SiameseDistance(ModelConfig(width=8, input_size=16, hypotheses=hypotheses))
    cfg = TrainConfig(model=model.config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(500):
        pick = torch.rand(8, generator=g) < 0.5
        loss = batch_loss(model, x, torch.where(pick[:, None, None], modes, other), torch.zeros(0), cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        hyp, prob = model.hypotheses(x)
        emb = model.embed(x).view(-1, 3, 3)
    assert torch.allclose(emb, hyp[:, 0], atol=1e-5) and (prob[:, :-1] >= prob[:, 1:]).all()
    # per image, the farther of the two modes from its nearest hypothesis
    worst = torch.rad2deg(torch.maximum(rotmat_distance(hyp, modes[:, None]).min(1).values,
                                        rotmat_distance(hyp, other[:, None]).min(1).values))
    if hypotheses == 1:
        assert worst.min() > 45  # measured 61.5-93.4 deg: a compromise between the two
    else:
        assert worst.max() < 12  # measured 4.6-7.0 deg


@pytest.mark.parametrize("group_name", ["C1", "C4"])
def test_the_consensus_of_turned_readings_follows_the_agreeing_ones(group_name):
    """Four readings of K = 2 hypotheses per image: three readings put their most probable
    hypothesis within 5 deg of the truth (with C4, each as another symmetry mate of it), one
    reading puts 0.9 of its probability on a pose 90 deg away. The most probable hypothesis over
    all readings is that outlier; the consensus is the agreeing ones' mean, nearer the truth than
    any of them; a plain mean of everything would be pulled away."""
    import roma

    from cryorient.distance.turns import consensus, most_probable_first
    from cryorient.symmetry import point_group, symmetric_distance

    group = point_group(group_name)
    g = torch.Generator().manual_seed(0)
    n = 64
    truth = so3.sample_rotations(n, g)

    def near(deg):  # truth turned by deg about a random axis normal to z: deg from every mate but its own
        phi = 2 * math.pi * torch.rand(n, generator=g)
        axis = torch.stack([phi.cos(), phi.sin(), torch.zeros(n)], 1)
        return roma.rotvec_to_rotmat(axis * math.radians(deg)) @ truth

    ops = group.ops()
    good = [ops[k % group.order] @ near(5.0) for k in range(3)]  # three readings, each a mate
    wrong = near(90.0)
    rot = torch.stack([torch.stack([good[0], near(60.0)], 1), torch.stack([good[1], near(70.0)], 1),
                       torch.stack([good[2], near(80.0)], 1), torch.stack([wrong, near(5.0)], 1)], 1)
    prob = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.7, 0.3], [0.9, 0.1]]).expand(n, 4, 2)
    first = most_probable_first(rot, prob)
    assert first.shape == (n, 8, 3, 3)
    assert torch.allclose(first[:, 0], wrong)  # the most probable is the outlier
    agreed = consensus(rot, prob, group)
    err = torch.rad2deg(symmetric_distance(agreed, truth, group))
    # the mean of 4 poses each 5 deg off: measured median 2.37 deg, max 4.70 (C1 and C4 alike)
    assert float(err.median()) < 4.0 and float(err.max()) < 5.0, err
    lone = torch.rad2deg(symmetric_distance(rot[:, 0, 0], truth, group))
    assert float(err.median()) < float(lone.median())


def test_sampler_balanced_and_augmented(volume):
    s = sampler(volume, seed=1, snr=0.5, aug=True)
    x, rot, designed = s.batch(64)
    assert x.shape == (64, 16, 16) and torch.isfinite(x).all()
    got = rotmat_distance(rot[:32], rot[32:])
    assert torch.allclose(got, designed, atol=1e-4)
    assert float(designed.min()) < 0.5 and float(designed.max()) > 2.5
    vol = augment_volume(volume, 4.0, AugmentationConfig(), torch.Generator().manual_seed(0))
    corr = torch.corrcoef(torch.stack([vol.flatten(), volume.flatten()]))[0, 1]
    assert 0.5 < float(corr) < 0.999


def test_snr_estimated_from_images(volume):
    for snr in (1.0, 1 / 16):
        stack, _ = simulate_stack(volume, 4.0, SimulationConfig(n_particles=400, snr=snr, max_shift_px=1),
                                  torch.Generator().manual_seed(0))
        est, _ = estimate_snr(stack.images.read())
        assert abs(est / snr - 1) < 0.2, (snr, est)


def test_snr_with_a_ctf_is_not_taken_for_noise():
    """A 25 kDa protein with a CTF (box 64 at 1.5 Å/px, SNR 1/16): the CTF spreads a large share
    of the signal into the background ring, so the ring's variance alone takes it for noise and
    the SNR comes out about half the truth. The imaging model measures that share on the
    reference's projections made with the stack's CTFs and gets the SNR back."""
    from cryorient.distance.data import imaging_from_stack

    ref = load_volume("1ake_adk_closed", DensityConfig(box=64, pixel_size=1.5))
    stack, truth = simulate_stack(ref, 1.5, SimulationConfig(n_particles=400, snr=1 / 16, ctf=True, max_shift_px=4),
                                  torch.Generator().manual_seed(0))
    plain, _ = estimate_snr(stack.images.read())
    corrected = imaging_from_stack(stack.blind(), ref, 4.5).snr
    # measured: truth 0.0625, the ring alone 0.0321 (0.51x), corrected 0.0596 (0.95x)
    assert plain < 0.7 * truth.measured_snr, (plain, truth.measured_snr)
    assert abs(corrected / truth.measured_snr - 1) < 0.1, (corrected, truth.measured_snr)


def _interrupt_after(n):
    count = [0]

    def cb(k):
        count[0] += k
        if count[0] >= n:
            raise KeyboardInterrupt

    return cb


def test_checkpoint_resume_matches_uninterrupted_run(volume, tmp_path):
    """In-process interruption inside epoch 2, augmentation and curriculum on: the resumed run
    is the uninterrupted run, bit for bit."""
    cfg = TrainConfig(max_epochs=3, minutes=None, steps_per_epoch=3, batch_size=8, val_size=16, model=TINY,
                      curriculum_epochs=3, warmup_steps=2,
                      augmentation=AugmentationConfig(enabled=True, refresh=2))
    val = sampler(volume, seed=99).batch(16)[:2]

    def make(rank):
        return sampler(volume, seed=10 + rank, snr=1.0, aug=True)

    full = tmp_path / "full"
    full.mkdir()
    reference = train(cfg, make, val, full, seed=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, make, val, broken, seed=0, progress=_interrupt_after(4))  # inside epoch 2
    assert (broken / "checkpoint.pt").is_file() and not (broken / "model.pt").exists()
    resumed = train(cfg, make, val, broken, resume=True, seed=0)
    assert resumed.final["train_loss"] == reference.final["train_loss"]
    assert resumed.final["val_mae"] == reference.final["val_mae"]
    payload = torch.load(broken / "model.pt", weights_only=True)
    assert payload["kind"] == "distance-model"
    a, b = load_model(full / "model.pt"), load_model(broken / "model.pt")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_train_killed_with_sigkill_resumes_bit_exact(tmp_path):
    """A real kill: ``cryorient train`` (augmentation and curriculum on) is SIGKILLed after its
    first checkpoint, resumed with --resume, and its model equals an uninterrupted run's."""
    sim = tmp_path / "sim"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cryorient", "simulate", "--structure", "1ake_adk_closed",
                    "--n-particles", "60", "--box-size", "32", "--pixel-size", "4", "--snr", "1",
                    "--outdir", str(sim), "--quiet"], check=True, env=env)
    args = [sys.executable, "-m", "cryorient", "train", "--reference", "1ake_adk_closed", "--particles",
            str(sim / "particles.star"), "--max-epochs", "3", "--steps-per-epoch", "6", "--batch-size", "8",
            "--width", "8", "--input-size", "16", "--quiet", "--threads", "1"]
    subprocess.run([*args, "--outdir", str(tmp_path / "full")], check=True, env=env, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--outdir", str(killed)], env=env)
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.is_file() and not (killed / "model.pt").exists(), "the kill came too late"
    subprocess.run([*args, "--outdir", str(killed), "--resume"], check=True, env=env, timeout=300)
    a, b = load_model(tmp_path / "full" / "model.pt"), load_model(killed / "model.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_fine_tuning_keeps_the_frozen_stages(volume, tmp_path):
    """``init`` with ``frozen_stages = 2``: the encoder's first two stages keep the start
    model's weights exactly, the rest trains; with 0 everything trains; a resumed fine-tuning
    freezes the same stages (the optimiser's state fits)."""
    cfg = TrainConfig(max_epochs=1, minutes=None, steps_per_epoch=3, batch_size=8, val_size=16, model=TINY,
                      warmup_steps=1, curriculum_epochs=1)
    val = sampler(volume, seed=99).batch(16)[:2]

    def make(rank):
        return sampler(volume, seed=5, snr=1.0)

    (tmp_path / "start").mkdir()
    start = train(cfg, make, val, tmp_path / "start", seed=0).model_path
    before = load_model(start)
    for frozen in (2, 0):
        out = tmp_path / f"frozen{frozen}"
        out.mkdir()
        train(replace(cfg, frozen_stages=frozen), make, val, out, seed=1, init=start)
        after = load_model(out / "model.pt")
        kept = [all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
                for a, b in zip(before.stages(), after.stages())]
        assert kept == [True, True, False, False] if frozen else [False] * 4, (frozen, kept)
        assert not torch.equal(before.project.weight, after.project.weight)
    resumed = train(replace(cfg, frozen_stages=2, max_epochs=2), make, val, tmp_path / "frozen2", resume=True,
                    seed=1, init=start)
    assert resumed.epochs == 2
    after = load_model(tmp_path / "frozen2" / "model.pt")
    assert all(torch.equal(p, q) for p, q in zip(before.stages()[1].parameters(), after.stages()[1].parameters()))
    for encoder, stages in ENCODER_STAGES.items():
        assert len(SiameseDistance(ModelConfig(encoder=encoder, head="cosine")).stages()) == stages
    with pytest.raises(CryorientError, match="has 4 stages"):
        TrainConfig(frozen_stages=5)


def test_bad_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CryorientError, match="corrupt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": "cryorient-checkpoint-v1", "kind": "distance-training"}, tmp_path / "other.pt")
    with pytest.raises(CryorientError, match="expected 'distance-model'"):
        load_model(tmp_path / "other.pt")


def test_pose_hypotheses_default_and_limits(tmp_path):
    # the rotation head proposes 4 hypotheses unless told otherwise; the cosine head and the
    # pairs objective one
    assert ModelConfig().hypotheses == 4
    assert ModelConfig(head="cosine").hypotheses == 1
    with pytest.raises(CryorientError, match="pairs objective trains one pose hypothesis"):
        TrainConfig(objective="pairs", model=ModelConfig())
    assert TrainConfig(objective="pairs", model=ModelConfig(hypotheses=1)).model.hypotheses == 1
    # a model saved before pose hypotheses existed (no such field in its config) had one
    old = SiameseDistance(ModelConfig(width=4, input_size=16, hypotheses=1))
    config = {k: v for k, v in asdict(old.config).items() if k != "hypotheses"}
    save_checkpoint(tmp_path / "old.pt", {"kind": "distance-model", "config": config,
                                          "state_dict": old.state_dict(), "summary": {}})
    assert load_model(tmp_path / "old.pt").config.hypotheses == 1


def test_preprocess_resamples_and_refuses_extremes():
    imgs = torch.randn(3, 64, 64)
    out = prepare_inputs(imgs, 2.0, None, 32, 4.0)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out.mean((-2, -1)), torch.zeros(3), atol=1e-5)
    out = prepare_inputs(torch.randn(2, 48, 48), 2.0, None, 32, 4.0)  # smaller field: padded
    assert out.shape == (2, 32, 32)
    with pytest.raises(CryorientError, match="too coarse"):
        check_compatible(64, 9.0, 32, 4.0)
    with pytest.raises(CryorientError, match="field of view"):
        check_compatible(16, 2.0, 32, 4.0)


def test_ddp_two_processes_in_sync(tmp_path):
    sim = tmp_path / "sim"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cryorient", "simulate", "--structure", "1ake_adk_closed",
                    "--n-particles", "50", "--box-size", "32",
                    "--pixel-size", "4", "--outdir", str(sim), "--quiet"], check=True, env=env)

    def torchrun(out, *extra):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
             "-m", "cryorient", "train", "--reference", "1ake_adk_closed",
             "--particles", str(sim / "particles.star"),
             "--max-epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--width", "8",
             "--input-size", "16",
             "--outdir", str(out), "--quiet", "--threads", "1", *extra],
            capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        payload = torch.load(out / "model.pt", weights_only=True)
        assert payload["summary"]["world_size"] == 2
        assert payload["summary"]["ranks_in_sync"] is True
        return payload["state_dict"]

    start = torchrun(tmp_path / "ddp")
    # fine-tuning across ranks: the frozen stages (the default two) take no part in the reduction
    tuned = torchrun(tmp_path / "ft", "--init", str(tmp_path / "ddp" / "model.pt"))
    assert torch.equal(start["encoder.1.0.weight"], tuned["encoder.1.0.weight"])
    assert not torch.equal(start["encoder.3.0.weight"], tuned["encoder.3.0.weight"])


def test_plateau_stops_training_only_once_the_cosine_has_decayed():
    from cryorient.distance.train import _Schedule

    cfg = TrainConfig(stop_patience=3, stop_after=0.67)
    schedule = _Schedule(planned_epochs=90)
    for value in [1.0, 0.5, 0.5, 0.499, 0.5]:  # a best, then three epochs without a 1% gain
        schedule.update(value, cfg)
    assert schedule.since_best == 3
    assert not schedule.plateaued(30, 1.0, cfg)  # a third of the plan: the learning rate is still high
    assert schedule.plateaued(61, 1.0, cfg)  # two thirds: the rule may stop
    assert not schedule.plateaued(61, 2.0, cfg)  # still in the SNR curriculum
    assert schedule.plateaued(30, 1.0, TrainConfig(stop_patience=3, schedule="plateau"))
    schedule.update(0.4, cfg)  # a gain resets the count
    assert not schedule.plateaued(80, 1.0, cfg)
