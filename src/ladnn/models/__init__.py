"""Backbones and the LA-DNN network with its loss."""
