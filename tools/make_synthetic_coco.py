"""Write the synthetic shapes dataset in COCO format.

Usage: python tools/make_synthetic_coco.py OUT_DIR [--num-train N] [--num-val N]
       [--image-size S] [--seed K] [--ext png|jpg] [--max-objects M]
       [--min-object-size PX] [--max-object-fraction F]
"""
from mmdeform.datasets.synthetic import main

if __name__ == '__main__':
    main()
