"""vicinal: MixUp-family data augmentation."""
