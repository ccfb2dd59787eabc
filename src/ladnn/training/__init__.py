"""Image caching, augmentation and the training loop."""
