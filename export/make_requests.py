# .venv/bin/python export/make_requests.py   (rewrites export/requests/*.json from Fashion-MNIST test images)
"""Writes one example REST request body per signature, from the first two Fashion-MNIST test images."""

from pathlib import Path

from reprlearn.data import load_dataset
from reprlearn.export.requests import write_request_examples

if __name__ == "__main__":
    test = load_dataset("fashion_mnist")["test"]
    for path in write_request_examples(Path(__file__).parent / "requests", test.images):
        print(path)
