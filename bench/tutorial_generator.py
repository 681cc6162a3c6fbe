"""The tutorial's generator, re-implemented faithfully for comparison (per-pixel Python loop).

As in the book's "CNN LSTM" chapter: frames are float64 numpy arrays built one pixel at
a time, each frame a copy of the previous, and the whole set is held in memory.
"""

from random import randint, random

import numpy as np


def next_frame(last_step, last_frame, column):
    lower = max(0, last_step - 1)
    upper = min(last_frame.shape[0] - 1, last_step + 1)
    step = randint(lower, upper)
    frame = last_frame.copy()
    frame[step, column] = 1
    return frame, step


def build_frames(size):
    frames = []
    frame = np.zeros((size, size))
    step = randint(0, size - 1)
    right = 1 if random() < 0.5 else 0
    column = 0 if right else size - 1
    frame[step, column] = 1
    frames.append(frame)
    for i in range(1, size):
        column = i if right else size - 1 - i
        frame, step = next_frame(step, frame, column)
        frames.append(frame)
    return frames, right


def generate_examples(size, n_patterns):
    x, y = [], []
    for _ in range(n_patterns):
        frames, right = build_frames(size)
        x.append(frames)
        y.append(right)
    x = np.array(x).reshape(n_patterns, size, size, size, 1)
    y = np.array(y).reshape(n_patterns, 1)
    return x, y
