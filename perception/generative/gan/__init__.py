"""A class-conditional data-efficient GAN with DiffAugment (issue #26)."""
