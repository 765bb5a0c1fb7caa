"""Offline compiler: turns a Sentence-BERT model into a bertnpu bundle (`python -m compile`)."""
