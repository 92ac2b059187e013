"""The official APE per-dataset configs (yangyangyang127/APE ``configs/*.yaml``) as JSON for the tests.

    python tools/reference/ape_configs.py --official PATH --commit SHA [--out tests/data/reference/ape_configs.json]

``tests/test_reference.py`` checks every APE and APE-T preset against these values. The checked-in
file was made from commit 70460de74d1e967f8b4d270b3419373694758536.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

FILES = {
    "ImageNet": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food101",
    "FGVCAircraft": "fgvc", "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat",
    "UCF101": "ucf101",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--out", default="tests/data/reference/ape_configs.json", type=Path)
    args = parser.parse_args()
    configs = {}
    for name, stem in FILES.items():
        raw = yaml.safe_load((args.official / "configs" / f"{stem}.yaml").read_text())
        configs[name] = {"file": f"configs/{stem}.yaml", **{k: v for k, v in raw.items() if k != "root_path"}}
    out = {"repo": "yangyangyang127/APE", "commit": args.commit, "configs": configs}
    args.out.write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
