"""Reproduce the LA-DNN paper's backbone table: baseline and LA-DNN per backbone, with intervals."""
