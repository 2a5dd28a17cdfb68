"""Does the input normalisation matter for an encoder pretrained on other statistics? The recipe study with every image
normalised to [-1, 1] (mean 0.5, std 0.5: the statistics TensorFlow's EfficientNet-lite weights were trained on)
instead of ImageNet's mean and std, which faceseg uses for every encoder.

It registers the recipe `default-bs4-adj-half` (the default from ImageNet weights, `default-bs4-adj`, under these
statistics) and passes every argument on to recipe_study.py, so it trains, resumes and pools like the study:

    python benchmarks/input_stats.py --work /tmp/study --size 256 --epochs 10 --runs 3 --recipes default-bs4-adj-half \\
        --inits imagenet --encoder timm-tf_efficientnet_lite0 --weights /tmp/w-lite0/efficientnet-lite0-57934424.pth --workers 1
    python benchmarks/input_stats.py --work /tmp/study --size 256 --epochs 10 --folds 3 --inits imagenet \\
        --encoder timm-tf_efficientnet_lite0 --pooled default-bs4-adj-half,default-bs4-adj

Pool only runs whose counts are kept (`<run>/eval-val`) or that were trained under the same statistics: a run scored
here for the first time is scored with [-1, 1] inputs.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faceseg_lib.dataset as D  # noqa: E402

HALF = (0.5, 0.5, 0.5)


def main(argv=None) -> int:
    if {'-h', '--help'} & set(sys.argv[1:] if argv is None else argv): print(__doc__)  # then recipe_study's own options
    D.IMAGENET_MEAN, D.IMAGENET_STD = HALF, HALF  # read when the transforms and `model_batch` are first made, in this process and its workers
    import recipe_study as rs
    rs.RECIPES['default-bs4-adj-half'] = dict(rs.RECIPES['default-bs4-adj'])
    return rs.main(argv)


if __name__ == '__main__':
    sys.exit(main())
