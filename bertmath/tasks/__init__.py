"""The task shapes of fine-tuning and their inference (Devlin et al. 2019, Figure 4), one module each:

    shape.py      TaskShape: what fine-tuning asks of every shape (model, encoding, batches, scores)
    encoding.py   what the shapes share: [CLS] a [SEP] (b [SEP]) ids, longest-first truncation, padded batches
    sequence.py   a text or a pair → a label or a score: task files, `SequenceShape`
    classify.py   `Classifier` (`bertmath classify`)
    tagging.py    a sentence → a tag per word: `TaggingShape`, `Tagger` (`bertmath tag`)
    qa.py         a question and a passage → the answer span: `SpanShape`, SQuAD files and scores
    answer.py     `Answerer` (`bertmath answer`)
    pairs.py      a text → a vector: pair files, SimCSE's corpus pairs, `EmbeddingShape`
    contrastive.py  the embedding losses (in-batch negatives, CoSENT) and GradCache
    retrieval.py  NDCG, MRR, MAP, Recall@k of rankings; BM25 and the bag-of-words cosine
    scores.py     accuracy, F1, MCC, Pearson, Spearman: pure math on tensors
    finetune.py   `bertmath finetune`: any TaskShape driven by the pretraining loop

Nothing is imported here: `bertmath classify` loads no trainer, `bertmath finetune` no tagger it does not use.
"""
