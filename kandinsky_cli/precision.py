"""The compute precision of a run: ``--dtype`` as asked, and what it resolves to on the device, as one value."""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16", "auto")


@dataclass(frozen=True)
class Precision:
    """``requested``: the ``--dtype`` value; ``name``: what runs (``auto`` resolved for the device, see
    :func:`bf16.resolve_dtype`). bfloat16 keeps weights and activations float32 and runs the large products in
    bf16 operators; float16 keeps both in float16."""

    requested: str
    name: str

    @classmethod
    def resolve(cls, requested: str, device: str) -> "Precision":
        """The precision of ``--dtype requested`` on ``device`` (cpu, gpu, ascend); a UserError where it cannot
        run."""
        from .bf16 import resolve_dtype

        return cls(requested, resolve_dtype(requested, device))

    @property
    def bf16(self) -> bool:
        return self.name == "bfloat16"

    @property
    def ms_dtype(self):
        """MindSpore's dtype of weights and activations."""
        import mindspore as ms

        return ms.float16 if self.name == "float16" else ms.float32

    def parameters(self) -> dict:
        """For PNG metadata, manifests and ``--json``."""
        return {"dtype": self.name, "dtype_requested": self.requested}
