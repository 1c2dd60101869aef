"""The networks (fusion, mlp), their dropout and CORAL; this file stays torch-free so the config can import it."""
from __future__ import annotations

from src.errors import UserError


def resolve_top_n(top_n, n_encoders: int) -> int:
    """model.top_n -> the number of encoders a clip keeps on a dataset with n_encoders encoders."""
    n = n_encoders if top_n == "all" else top_n if top_n > 0 else n_encoders + top_n
    if top_n == 0 or n < 1:
        raise UserError(f"model.top_n: {top_n} keeps no encoder of {n_encoders} (use n >= 1, all, or -k for all but k)")
    return min(n, n_encoders)
