"""Matplotlib figures for reports, drawn with the Agg renderer (no screen) into reproducible PNG bytes."""

from __future__ import annotations

import io

MARKERS = "osD^vPX<>*hp"


def new_figure(width: float, height: float):
    """A matplotlib figure (Agg, no screen needed) with one axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, without a timestamp or software tag (the same plot gives the same bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
