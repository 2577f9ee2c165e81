"""Set-up shared by the generator tests (not a test module: test modules import from here,
never from one another)."""

from __future__ import annotations

# `--set` overrides for tools/train_generator.py that make a HART generator (configs/generative/
# hart_camera.yaml) train in about a second on the tiny world's bank: 16 x 16 crops, three
# scales, a one-block transformer, a handful of steps, a checkpoint every two.
TINY_HART = (
    "--set", "data.image_size=16", "--set", "tokenizer.scales=[1,2,4]",
    "--set", "tokenizer.latent_dim=4", "--set", "tokenizer.vocab_size=16",
    "--set", "tokenizer.hidden=16", "--set", "transformer.width=32",
    "--set", "transformer.depth=1", "--set", "transformer.heads=2",
    "--set", "transformer.cond_dim=32", "--set", "residual_head.width=32",
    "--set", "residual_head.depth=1", "--set", "train.batch_size=8",
    "--set", "train.classifier_steps=3", "--set", "train.tokenizer_steps=4",
    "--set", "train.transformer_steps=4", "--set", "train.log_every=2",
    "--set", "train.checkpoint_every=2",
)  # fmt: skip

# With TINY_HART: the LiDAR generator, on a 16 x 16 x 4 box-frame occupancy grid.
TINY_HART_LIDAR = ("--set", "data.modality=lidar", "--set", "data.lidar_grid=[16,16,4]")

# For configs/generative/gan_camera.yaml: a GAN of 16 x 16 crops, 8-wide networks, two steps
# of batch 4, a checkpoint and a KID at step 2 (its own classifier, two steps).
TINY_GAN = (
    "--set", "data.image_size=16", "--set", "model.z_dim=8", "--set", "model.g_width=8",
    "--set", "model.d_width=8", "--set", "model.cond_dim=16", "--set", "train.steps=2",
    "--set", "train.batch_size=4", "--set", "train.log_every=1",
    "--set", "train.checkpoint_every=2", "--set", "train.kid_every=2",
    "--set", "train.classifier_steps=2",
)  # fmt: skip
