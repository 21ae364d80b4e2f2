"""Test layers: how much of the real system a test needs.

- "mock": a pool's workers run inline in the test's process (command logic
  only, milliseconds);
- "bridge": real worker processes running a scripted mock worker;
- "full": real workers.

A run selects the highest layer it allows (``--otpy-layer``, else the
``OTPY_LAYER`` environment variable, else "full": everything runs); a test
above it is skipped, saying so. ``LayerSkipped`` is a ``unittest.SkipTest``,
so pytest and unittest both report it as a skip.
"""

from __future__ import annotations

import os
import unittest

from .. import OtpyError

LAYERS = ("mock", "bridge", "full")
_selected: str | None = None  # set by the pytest plugin's --otpy-layer


class LayerSkipped(OtpyError, unittest.SkipTest):
    """A test needs a layer above the one this run selected."""


def check_layer(layer: str | None, what: str = "layer") -> str | None:
    """``layer`` if it is one of LAYERS (or None); ValueError naming it otherwise."""
    if layer is not None and layer not in LAYERS:
        raise ValueError(f"{what} must be one of {', '.join(LAYERS)}, not {layer!r}")
    return layer


def select_layer(layer: str | None) -> None:
    """Set the highest layer this run allows (None: back to OTPY_LAYER / "full")."""
    global _selected
    _selected = check_layer(layer, "the selected layer")


def selected_layer() -> str:
    """The highest layer this run allows."""
    if _selected is not None:
        return _selected
    layer = os.environ.get("OTPY_LAYER") or "full"
    check_layer(layer, "OTPY_LAYER")
    return layer


def skip_reason(layer: str | None) -> str | None:
    """Why a test of ``layer`` does not run now, or None if it does."""
    if layer is None:
        return None
    chosen = selected_layer()
    if LAYERS.index(layer) <= LAYERS.index(chosen):
        return None
    return f"needs the {layer!r} layer; this run selected {chosen!r} (--otpy-layer / OTPY_LAYER)"


def require_layer(layer: str | None) -> None:
    """Raise LayerSkipped if ``layer`` is above the selected one."""
    reason = skip_reason(check_layer(layer))
    if reason is not None:
        raise LayerSkipped(reason)
