"""In-memory sliding-window prediction with MONAI (gaussian blending), for volumes that fit.

Used for validation during training. 2D networks run slice by slice in batches of slices; 3D
networks see the whole volume through 3D windows.
"""
from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def predict_array(model: torch.nn.Module, image: np.ndarray, dims: int, roi: tuple[int, ...],
                  overlap: float = 0.25, batch_size: int = 4,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Foreground probability (Z, Y, X) float32 of a normalised (Z, Y, X) image."""
    from monai.inferers import sliding_window_inference

    model.eval()
    out = np.empty(image.shape, dtype=np.float32)
    if dims == 2:
        slices_per_pass = max(1, batch_size)
        for z0 in range(0, image.shape[0], slices_per_pass):
            x = torch.from_numpy(np.ascontiguousarray(image[z0:z0 + slices_per_pass]))
            x = x[:, None].to(device)
            logits = sliding_window_inference(x, roi, batch_size, model, overlap=overlap,
                                              mode="gaussian", padding_mode="reflect")
            out[z0:z0 + slices_per_pass] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    else:
        x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device)
        logits = sliding_window_inference(x, roi, batch_size, model, overlap=overlap,
                                          mode="gaussian", padding_mode="reflect")
        out[:] = torch.sigmoid(logits.float())[0, 0].cpu().numpy()
    return out
