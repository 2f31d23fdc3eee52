#!/usr/bin/env python3
"""State dicts and step-0 gradients from real PyTorch, for `--params` tests.

For three of the seed's models (written here as the seed wrote them, with its module
names) this saves, under reference/mnist/:
  <model>.safetensors            the state_dict of a fresh model (torch.manual_seed(0), f32)
  <model>-grads-f32.safetensors  PyTorch's gradients of the mean cross-entropy on the first
  <model>-grads-f64.safetensors  25 training images (file order), in f32 and in f64
Run with the project's torch venv: `make golden`.
"""
import gzip
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "mnist")
BATCH = 25


class CNN(nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.bn = bn
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1568, 120), nn.Linear(120, 120), nn.Linear(120, 10)
        if bn:
            self.conv2_bn, self.fc1_bn, self.fc2_bn = nn.BatchNorm2d(32), nn.BatchNorm1d(120), nn.BatchNorm1d(120)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.conv2(x)
        x = self.conv2_bn(x) if self.bn else x
        x = F.max_pool2d(F.relu(x), 2).flatten(1)
        x = self.fc1(x)
        x = F.relu(self.fc1_bn(x) if self.bn else x)
        x = self.fc2(x)
        x = F.relu(self.fc2_bn(x) if self.bn else x)
        return self.fc3(x)


class MLP(nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.bn = bn
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(784, 120), nn.Linear(120, 120), nn.Linear(120, 120), nn.Linear(120, 10)
        if bn:
            self.fc2_bn, self.fc3_bn = nn.BatchNorm1d(120), nn.BatchNorm1d(120)

    def forward(self, x):
        x = F.relu(self.fc1(x.flatten(1)))
        x = self.fc2(x)
        x = F.relu(self.fc2_bn(x) if self.bn else x)
        x = self.fc3(x)
        x = F.relu(self.fc3_bn(x) if self.bn else x)
        return self.fc4(x)


class Softmax(nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.bn = bn
        self.fc1 = nn.Linear(784, 10)
        if bn:
            self.input_bn = nn.BatchNorm1d(784)

    def forward(self, x):
        x = x.flatten(1)
        x = self.input_bn(x) if self.bn else x
        # The seed's double softmax: these probabilities go into F.cross_entropy.
        return F.softmax(self.fc1(x), dim=1)


MODELS = {"CNN_BatchNorm": lambda: CNN(True), "MLP_BatchNorm": lambda: MLP(True), "Softmax": lambda: Softmax(False)}


def first_batch():
    with gzip.open(os.path.join(DATA, "train-images-idx3-ubyte.gz")) as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        pixels = np.frombuffer(f.read(BATCH * rows * cols), dtype=np.uint8)
    with gzip.open(os.path.join(DATA, "train-labels-idx1-ubyte.gz")) as f:
        f.read(8)
        labels = np.frombuffer(f.read(BATCH), dtype=np.uint8)
    # torchvision's ToTensor and Normalize, in f32.
    x = torch.from_numpy(pixels.copy()).float().div(255).reshape(BATCH, 1, rows, cols)
    x = x.sub(torch.tensor(0.1307)).div(torch.tensor(0.3081))
    return x, torch.from_numpy(labels.astype(np.int64))


def grads(model, x, y):
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone().contiguous() for n, p in model.named_parameters()}


def main():
    torch.set_num_threads(1)
    out = os.path.join(HERE, "mnist")
    os.makedirs(out, exist_ok=True)
    x, y = first_batch()
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make()
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out, f"{name}.safetensors"))
        # Gradients from fresh copies, so running statistics start from the saved state.
        m32 = make()
        m32.load_state_dict(state)
        save_file(grads(m32, x, y), os.path.join(out, f"{name}-grads-f32.safetensors"))
        m64 = make().double()
        m64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
        save_file(grads(m64, x.double(), y), os.path.join(out, f"{name}-grads-f64.safetensors"))
        print(f"{name}: {len(state)} tensors")


if __name__ == "__main__":
    main()
