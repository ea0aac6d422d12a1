"""The saved-tensor counter the trainer's probe, the planner-vs-PyTorch test and the compiled-memory benchmark share."""

import torch

from flopwise.train.memory_probe import saved_tensor_bytes


def test_saved_tensor_bytes_counts_each_storage_once_with_its_peak_and_total():
    x1, x2 = (torch.randn(4, 8, requires_grad=True) for _ in range(2))
    w = torch.randn(8, 8, requires_grad=True)
    one = 4 * 8 * 4  # bytes of one fp32 [4, 8] tensor
    with saved_tensor_bytes([w]) as saved:
        y1 = (x1 @ w).relu()  # mm saves x1 and w (excluded), relu its output
        (y1 * y1).sum().backward()  # mul saves y1 twice: one storage
        assert saved["peak"] == 2 * one
        y2 = (x2 @ w).relu()  # after the backward released the first two, a second step's two (x1, y1 still held)
        (y2 * y2).sum().backward()
    assert saved["peak"] == 2 * one  # never more than one step's alive at once
    assert saved["total"] == 4 * one  # every storage saved, once each


def test_saved_tensor_bytes_counts_a_released_storage_again_when_its_address_is_reused():
    w = torch.randn(64, 64, requires_grad=True)
    one = 32 * 64 * 4
    with saved_tensor_bytes([w]) as saved:
        for _ in range(3):  # nothing held between steps: the allocator may hand the same addresses out again
            x = torch.randn(32, 64, requires_grad=True)
            (x @ w).relu().sum().backward()
            del x
    assert saved["peak"] == 2 * one and saved["total"] == 3 * 2 * one
