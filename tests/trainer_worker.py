"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node {1,2}``: a few BI-BAU M-steps through the real
Trainer, with the E-step's triggers fixed so that only the data-parallel M-step differs between the runs.

The clean set is exactly one global batch (16 pairs: 16 per process in one process, 8 per process in two), so every
step sees the same pairs whatever the process count; the contrastive terms gather embeddings across ranks, so the
mean of the ranks' losses must equal the one-process loss at every step, optimizer steps included.

Usage: python tests/trainer_worker.py OUTPUT_JSON
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

GLOBAL_BATCH = 16
STEPS = 3


def main() -> None:
    from bibau_hf import BIBAUConfig, BIBAUTrainer
    from bibau_hf.data import load_digits_data
    from bibau_hf.inversion.image_trigger import build_image_trigger
    from bibau_hf.inversion.text_trigger import SoftTokenTrigger
    from bibau_hf.models import TinyCLIPSpec, build_tiny_model

    world = int(os.environ["WORLD_SIZE"])
    model = build_tiny_model("hf", TinyCLIPSpec(width=32, heads=2, embed_dim=32, patch_size=8, bpe_merges=2000), 0)
    train, _ = load_digits_data()
    data = train.take(GLOBAL_BATCH, seed=0)
    generator = torch.Generator().manual_seed(0)
    image_trigger = build_image_trigger("mask", 1, (32, 32), generator=generator)
    soft_tokens = SoftTokenTrigger(model, 1, 2, generator=generator).tokens[0].detach().clone()
    target = torch.nn.functional.normalize(torch.randn(model.embed_dim, generator=generator), dim=0)

    class FixedTriggers(BIBAUTrainer):
        """The M-step alone: the same triggers and target on every rank and in every run."""

        def _e_step(self, round_index: int) -> None:
            self._image_triggers = [image_trigger]
            self._soft_tokens = soft_tokens.to(self.args.device)
            self._target_directions = target.unsqueeze(0).to(self.args.device)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    losses: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        # No use_cpu here: several processes on a GPU-less machine must pick gloo on their own.
        config = BIBAUConfig(
            output_dir=out, per_device_train_batch_size=GLOBAL_BATCH // world, max_steps=STEPS, em_rounds=1,
            trigger_shift=False, final_scan=False, disable_tqdm=True, report_to="none", seed=0, logging_steps=1000,
            learning_rate=1e-3,
        )
        assert config.world_size == world, (config.world_size, world)
        FixedTriggers(model, config, data).train()
    mean = torch.tensor(losses, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(mean)
        mean /= world
    if int(os.environ["RANK"]) == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump({"world_size": world, "use_cpu": config.use_cpu, "losses": mean.tolist()}, handle)
    print(f"rank {os.environ['RANK']}: ok", flush=True)
    # As in distributed_worker.py: skip interpreter teardown, where gloo's threads sometimes abort after success.
    os._exit(0)


if __name__ == "__main__":
    main()
