"""The optional `plot` extra (matplotlib): pictures of a run and of the math, one module per command.

    plot.py       `bertmath plot`: a run's training curves (metrics.jsonl → training.png)
    figures.py    `bertmath figures`: exp, sigmoid, GELU, softmax, sampling, embeddings, √d_k, masking, WordPiece
    attention.py  `bertmath attention`: attention heat maps of a checkpoint on a text
    embed.py      `bertmath embed`: nearest words, analogies, a word in context
    plotting.py   what they share: importing matplotlib, an Agg figure, heat maps, an atomic PNG write

matplotlib is imported only when a figure is drawn; nothing here is imported by the core but `plot.py`'s
`plot_if_available`, which the trainer calls at the end of a run.
"""
