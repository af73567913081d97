"""What every bertmath figure shares: importing matplotlib (the optional `plot` extra), a figure on an Agg
canvas, heat maps with their values written in, and an atomic PNG write.

matplotlib is imported only when a figure is drawn, and only through its Agg canvas: no pyplot, no global
backend switch, nothing shown on screen. Without matplotlib, every drawing function raises one
`BertmathError` that says how to install it.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import BertmathError, OutputError
from ..io import atomic_write_bytes, check_output

INSTALL_HINT = "pip install 'bertmath[plot]'"
DPI = 100  # the PNGs are for reading on screen and in docs/: ~100-200 KB each


def import_matplotlib():
    """(Figure, FigureCanvasAgg); a BertmathError naming the fix when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (fails first and clearly when matplotlib is not installed)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BertmathError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    """An empty matplotlib Figure of width × height inches at DPI, with constrained layout (labels never
    overlap the next panel), attached to an Agg canvas."""
    Figure, FigureCanvasAgg = import_matplotlib()
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, out: str | Path) -> Path:
    """Write `fig` to `out` (parent directories created) atomically, as checkpoints are written, so that a
    viewer never sees half a PNG; returns the path. An OutputError if `out` cannot be written."""
    out = check_output(out)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, png.getvalue())
    except OSError as e:  # no permission, a full disk: the user's to fix, said in one line
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    return out


def checkpoint_name(path: str | Path) -> str:
    """The last two parts of a checkpoint's absolute path ("checkpoints/small"), for titles."""
    return "/".join(Path(path).resolve().parts[-2:])


def heatmap(ax, matrix, row_labels: list[str], col_labels: list[str], *, values: bool = True, fmt: str = "{:.2f}",
            vmin: float = 0.0, vmax: float = 1.0, cmap: str = "Blues", fontsize: float = 8):
    """Draw `matrix` (R, C; a tensor or nested lists) as an image on `ax` with labelled rows and columns and,
    with `values`, each number written in its cell (white on dark cells); returns the image for a colour bar."""
    matrix = [[float(v) for v in row] for row in matrix.tolist()] if hasattr(matrix, "tolist") else matrix
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=90 if max(map(len, col_labels), default=0) > 3 else 0,
                  fontsize=fontsize)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=fontsize)
    if values:
        for r, row in enumerate(matrix):
            for c, v in enumerate(row):
                dark = (v - vmin) / ((vmax - vmin) or 1) > 0.6
                ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=fontsize - 1,
                        color="white" if dark else "black")
    return image
