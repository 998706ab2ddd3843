"""A model file that forgot to define build_model and example_inputs."""

import torch

model = torch.nn.Linear(4, 4)
