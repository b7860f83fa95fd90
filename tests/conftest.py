import torch

# 2-core machines: one torch thread per test process keeps the suite from oversubscribing.
torch.set_num_threads(1)
