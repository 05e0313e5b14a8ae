"""Image priors of DeepInversion: total variation and an l2 penalty.

Without them the pixels that satisfy BN statistics are high-frequency noise; TV favours
piecewise-smooth images and l2 keeps the magnitude of the normalised input bounded.
"""
import torch

TV_NORMS = ('l2', 'l1')


def neighbour_differences(x: torch.Tensor):
    """Differences to the right, down, and both diagonal neighbours of an (N, C, H, W) batch."""
    return (x[:, :, :, :-1] - x[:, :, :, 1:],
            x[:, :, :-1, :] - x[:, :, 1:, :],
            x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
            x[:, :, :-1, :-1] - x[:, :, 1:, 1:])


def total_variation(x: torch.Tensor, norm: str = 'l2') -> torch.Tensor:
    """Total variation over four neighbour directions.

    ``'l2'``: sum over directions of the L2 norm of the whole difference tensor (the form the
    reference weights with lambda_TV); ``'l1'``: sum over directions of the mean absolute
    difference.
    """
    if norm not in TV_NORMS:
        raise ValueError(f'tv_norm: {norm!r} is not one of {", ".join(TV_NORMS)}')
    diffs = neighbour_differences(x.float())
    if norm == 'l2':
        return sum(torch.norm(d) for d in diffs)
    return sum(d.abs().mean() for d in diffs)


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's L2 norm."""
    return torch.norm(x.float().reshape(x.shape[0], -1), dim=1).mean()
